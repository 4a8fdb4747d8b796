import json
from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import numeric, run_entrypoint, work_dir
from rlhf_assets.policy.config import SFTConfig
from rlhf_assets.preference.snapshot import pinned_dataset_id, sft_jsonl


class SFTPolicyConfig(dg.Config):
    """SFT settings; each is a field of SFTConfig (rlhf_assets/policy/config.py) with the same default."""

    preset: Literal["tiny", "small", "hf"] = "tiny"
    model_path: str | None = None
    """Local causal-LM checkpoint for the `hf` preset."""
    max_prompt_tokens: int = SFTConfig.max_prompt_tokens
    max_response_tokens: int = SFTConfig.max_response_tokens
    batch_size: int = SFTConfig.batch_size
    lr: float | None = None
    """Learning rate; None takes the preset's default."""
    epochs: int = SFTConfig.epochs
    max_steps: int = SFTConfig.max_steps
    precision: str = SFTConfig.precision
    seed: int = SFTConfig.seed

    def training_config(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


@dg.asset(
    partitions_def=release_partitions,
    group_name="policy",
    kinds={"pytorch", "transformers"},
    io_manager_key="table_io_manager",
)
def sft_policy(
    context: dg.AssetExecutionContext,
    config: SFTPolicyConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    preference_dataset: pl.DataFrame,
):
    """Causal LM fine-tuned on the preferred responses of the release's train split (loss on response tokens
    only), in its own process (`rlhf policy sft` through Dagster Pipes). PPO's start point and frozen reference."""
    dataset_id = pinned_dataset_id(storage.storage(), context.partition_key)
    training = config.training_config()
    work = work_dir(storage.root, "sft_policy", context.partition_key, dataset_id, training)
    work.mkdir(parents=True, exist_ok=True)
    (work / "sft.jsonl").write_bytes(sft_jsonl(preference_dataset, "train"))
    (work / "sft_val.jsonl").write_bytes(sft_jsonl(preference_dataset, "validation"))
    (work / "config.json").write_text(json.dumps(training, indent=2))
    args = ["sft", "--config", str(work / "config.json"), "--data", str(work / "sft.jsonl"), "--out", str(work),
            "--store", storage.root, "--dataset-id", dataset_id]
    if (work / "sft_val.jsonl").stat().st_size:
        args += ["--val-data", str(work / "sft_val.jsonl")]
    reported, metadata = run_entrypoint(context, pipes_subprocess_client, storage, "rlhf_assets.policy.entrypoint",
                                        args)
    reference = {"artifact_id": reported["artifact_id"], "uri": reported.get("artifact_uri"),
                 "dataset_id": dataset_id, "metrics": numeric(reported)}
    return dg.Output(reference, metadata={**metadata, "work_dir": dg.MetadataValue.path(str(work))})
