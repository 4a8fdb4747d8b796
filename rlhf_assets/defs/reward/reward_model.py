import json
from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import numeric, run_entrypoint, work_dir
from rlhf_assets.preference.snapshot import pairs_jsonl, pinned_dataset_id
from rlhf_assets.reward.config import RMConfig


class RewardModelConfig(dg.Config):
    """Training settings; each is a field of RMConfig (rlhf_assets/reward/config.py) with the same default."""

    preset: Literal["tiny", "tiny-decoder", "small", "hf"] = "tiny"
    model_path: str | None = None
    """Local checkpoint directory for the `hf` preset."""
    max_length: int = RMConfig.max_length
    batch_size: int = RMConfig.batch_size
    lr: float | None = None
    """Learning rate; None takes the preset's default."""
    epochs: int = RMConfig.epochs
    max_steps: int = RMConfig.max_steps
    accumulate_grad_batches: int = RMConfig.accumulate_grad_batches
    gradient_clip_val: float = RMConfig.gradient_clip_val
    precision: str = RMConfig.precision
    """`auto`: bf16-mixed on GPU, 32-true on CPU."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    devices: int = RMConfig.devices
    seed: int = RMConfig.seed
    margin: float = RMConfig.margin
    use_soft_targets: bool = RMConfig.use_soft_targets
    use_weights: bool = RMConfig.use_weights
    center_coef: float = RMConfig.center_coef
    early_stopping_patience: int = RMConfig.early_stopping_patience

    def training_config(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


@dg.asset(
    partitions_def=release_partitions,
    group_name="reward",
    kinds={"pytorch", "lightning"},
    io_manager_key="table_io_manager",
)
def reward_model(
    context: dg.AssetExecutionContext,
    config: RewardModelConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    preference_dataset: pl.DataFrame,
):
    """Bradley–Terry reward model trained with Lightning in its own process (`rlhf rm train`, launched through
    Dagster Pipes, so DDP/FSDP own their processes), stored as a content-addressed safetensors artifact."""
    return train_rm(context, config, storage, pipes_subprocess_client, preference_dataset, "train", "reward_model")


def train_rm(context: dg.AssetExecutionContext, config: RewardModelConfig, storage: StorageResource,
             client: dg.PipesSubprocessClient, dataset: pl.DataFrame, split: str, kind: str) -> dg.Output:
    """Stage the release's ``split`` (train pairs) and validation pairs, run `rlhf rm train` through Pipes, and
    return the artifact reference; shared by reward_model and judge_reward_model (``kind`` = the artifact's role)."""
    dataset_id = pinned_dataset_id(storage.storage(), context.partition_key)  # the artifact's lineage
    training = config.training_config()
    work = work_dir(storage.root, kind, context.partition_key, dataset_id, training)
    work.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", split), ("val.jsonl", "validation")):
        (work / name).write_bytes(pairs_jsonl(dataset, part))
    (work / "config.json").write_text(json.dumps(training, indent=2))
    reported, metadata = run_entrypoint(context, client, storage, "rlhf_assets.reward.entrypoint", [
        "train", "--config", str(work / "config.json"), "--pairs", str(work / "train.jsonl"),
        "--val-pairs", str(work / "val.jsonl"), "--out", str(work), "--store", storage.root,
        "--dataset-id", dataset_id, "--artifact-kind", kind,
    ])
    reference = {"artifact_id": reported["artifact_id"], "uri": reported.get("artifact_uri"),
                 "dataset_id": dataset_id, "metrics": numeric(reported)}
    return dg.Output(reference, metadata={**metadata, "work_dir": dg.MetadataValue.path(str(work))})
