import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import POLICY_SFT, TRAINING_RETRY_POLICY, TrainingLauncherResource, launch_training
from rlhf_assets.policy.config import SFTConfig
from rlhf_assets.preference.snapshot import sft_jsonl
from rlhf_assets.references import DatasetTable, ModelRef

SFTPolicyConfig = config_class("SFTPolicyConfig", SFTConfig)


@dg.asset(partitions_def=release_partitions, group_name="policy", kinds={"pytorch", "transformers"}, owners=OWNERS,
          retry_policy=TRAINING_RETRY_POLICY)
def sft_policy(
    context: dg.AssetExecutionContext,
    config: SFTPolicyConfig,
    storage: StorageResource,
    training_launcher: TrainingLauncherResource,
    preference_dataset: DatasetTable,
) -> dg.Output[ModelRef]:
    """Causal LM fine-tuned on the preferred responses of the release's train split (loss on response tokens
    only), in its own process (`rlhf policy sft` through Dagster Pipes). PPO's start point and frozen reference."""
    table = preference_dataset.table
    run = launch_training(context, training_launcher, storage, POLICY_SFT, settings_from(config, SFTConfig),
                          dataset_id=preference_dataset.dataset_id,
                          inputs={"--data": ("sft.jsonl", sft_jsonl(table, "train")),
                                  "--val-data": ("sft_val.jsonl", sft_jsonl(table, "validation"))})
    return run.output(ModelRef(artifact_id=run.artifact_id, kind="sft_policy",
                               dataset_id=preference_dataset.dataset_id, uri=run.uri, metrics=run.metrics()))
