import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import REWARD_TRAIN, TRAINING_RETRY_POLICY, TrainingLauncherResource, launch_training
from rlhf_assets.preference.snapshot import pairs_jsonl
from rlhf_assets.references import DatasetTable, ModelRef
from rlhf_assets.reward.config import RMConfig

RewardModelConfig = config_class("RewardModelConfig", RMConfig)


@dg.asset(partitions_def=release_partitions, group_name="reward", kinds={"pytorch", "lightning"}, owners=OWNERS,
          retry_policy=TRAINING_RETRY_POLICY)
def reward_model(
    context: dg.AssetExecutionContext,
    config: RewardModelConfig,
    storage: StorageResource,
    training_launcher: TrainingLauncherResource,
    preference_dataset: DatasetTable,
) -> dg.Output[ModelRef]:
    """Bradley–Terry reward model trained with Lightning in its own process (`rlhf rm train`, launched through
    Dagster Pipes — a subprocess or a GPU pod — so DDP/FSDP own their processes), stored as a content-addressed safetensors artifact."""
    return train_rm(context, settings_from(config, RMConfig), storage, training_launcher, preference_dataset,
                    "train", "reward_model")


def train_rm(context: dg.AssetExecutionContext, config: RMConfig, storage: StorageResource,
             launcher: TrainingLauncherResource, dataset: DatasetTable, split: str, kind: str,
             **metadata) -> dg.Output[ModelRef]:
    """Train on the release's ``split`` pairs, early-stopped on its validation pairs, and return the artifact's
    reference; shared by reward_model and judge_reward_model (``kind`` = the artifact's role)."""
    run = launch_training(context, launcher, storage, REWARD_TRAIN, config, dataset_id=dataset.dataset_id,
                          inputs={"--pairs": ("train.jsonl", pairs_jsonl(dataset.table, split)),
                                  "--val-pairs": ("val.jsonl", pairs_jsonl(dataset.table, "validation"))},
                          args=["--artifact-kind", kind])
    return run.output(ModelRef(artifact_id=run.artifact_id, kind=kind, dataset_id=dataset.dataset_id, uri=run.uri,
                               metrics=run.metrics()), **metadata)
