import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.snapshot import pairs_jsonl, pinned_dataset_id
from rlhf_assets.reward.config import RMConfig

WORK_DIR_ENV = "RLHF_WORK_DIR"


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


def work_dir(storage_root: str, release: str, dataset_id: str, config: dict) -> Path:
    """Stable per (release, dataset, config): a rerun after a crash finds its checkpoints and resumes."""
    key = hashlib.sha256(json.dumps([dataset_id, config], sort_keys=True).encode()).hexdigest()[:12]
    base = os.environ.get(WORK_DIR_ENV) or (storage_root if "://" not in storage_root else ".rlhf-work")
    return Path(base).resolve() / "work" / "reward_model" / release / key


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
    dataset_id = pinned_dataset_id(storage.storage(), context.partition_key)  # the artifact's lineage
    training = config.training_config()
    work = work_dir(storage.root, context.partition_key, dataset_id, training)
    work.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.jsonl"), ("validation", "val.jsonl")):
        (work / name).write_bytes(pairs_jsonl(preference_dataset, split))
    (work / "config.json").write_text(json.dumps(training, indent=2))
    command = [
        sys.executable, "-m", "rlhf_assets.reward.entrypoint", "train",
        "--config", str(work / "config.json"), "--pairs", str(work / "train.jsonl"),
        "--val-pairs", str(work / "val.jsonl"), "--out", str(work), "--store", storage.root,
        "--dataset-id", dataset_id,
    ]
    env = {"RLHF_STORAGE_ROOT": storage.root}
    if storage.s3_endpoint_url:
        env["RLHF_S3_ENDPOINT_URL"] = storage.s3_endpoint_url
    results = pipes_subprocess_client.run(command=command, context=context, env=env).get_results()
    reported = {k: v.value for k, v in results[-1].metadata.items()} if results else {}
    if "artifact_id" not in reported:
        raise dg.Failure(f"training finished without reporting an artifact (work dir {work})")
    reference = {"artifact_id": reported["artifact_id"], "uri": reported.get("artifact_uri"),
                 "dataset_id": dataset_id, "metrics": {k: v for k, v in reported.items()
                                                      if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    return dg.Output(reference, metadata={**results[-1].metadata, "work_dir": dg.MetadataValue.path(str(work))})

