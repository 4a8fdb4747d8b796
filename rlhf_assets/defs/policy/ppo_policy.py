import json
from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import numeric, run_entrypoint, work_dir
from rlhf_assets.policy.config import PPOConfig
from rlhf_assets.preference.snapshot import pinned_dataset_id, prompts_jsonl, sft_jsonl


class PPOPolicyConfig(dg.Config):
    """PPO settings; each is a field of PPOConfig (rlhf_assets/policy/config.py) with the same default."""

    preset: Literal["tiny", "small", "hf"] = "tiny"
    """Only picks the default learning rate; the model is the release's sft_policy."""
    steps: int = PPOConfig.steps
    rollout_prompts: int = PPOConfig.rollout_prompts
    max_prompt_tokens: int = PPOConfig.max_prompt_tokens
    max_new_tokens: int = PPOConfig.max_new_tokens
    no_eos_penalty: float = PPOConfig.no_eos_penalty
    ppo_epochs: int = PPOConfig.ppo_epochs
    minibatch_size: int = PPOConfig.minibatch_size
    micro_batch_size: int = PPOConfig.micro_batch_size
    lr: float | None = None
    """Learning rate; None takes the preset's default."""
    ent_coef: float = PPOConfig.ent_coef
    sft_mix_share: float = PPOConfig.sft_mix_share
    init_kl_coef: float = PPOConfig.init_kl_coef
    adaptive_kl: bool = PPOConfig.adaptive_kl
    kl_target: float = PPOConfig.kl_target
    kl_budget: float = PPOConfig.kl_budget
    """Hard budget on the mean sequence KL to the reference (nats); the deployment gate uses it too."""
    on_kl_over_budget: Literal["reject", "stop"] = "reject"
    eval_every: int = PPOConfig.eval_every
    select_by: Literal["objective", "proxy_reward"] = "objective"
    """Checkpoint kept: best held-out proxy reward − β·KL (default), or best proxy reward alone."""
    n_eval_prompts: int = PPOConfig.n_eval_prompts
    precision: str = PPOConfig.precision
    seed: int = PPOConfig.seed

    def training_config(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


@dg.asset(
    partitions_def=release_partitions,
    group_name="policy",
    kinds={"pytorch", "transformers"},
    io_manager_key="table_io_manager",
    check_specs=[dg.AssetCheckSpec("kl_within_budget", asset="ppo_policy", blocking=True)],
)
def ppo_policy(
    context: dg.AssetExecutionContext,
    config: PPOPolicyConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    preference_dataset: pl.DataFrame,
    sft_policy: dict,
    reward_model: dict,
    rm_calibration: dict,
):
    """PPO of the SFT policy against the calibrated reward model with a KL penalty to the frozen SFT reference
    (`rlhf policy ppo` through Dagster Pipes). Keeps the checkpoint with the best held-out proxy reward inside the
    KL budget; reward vs √KL, KL and β, and response length are plotted in the metadata."""
    dataset_id = pinned_dataset_id(storage.storage(), context.partition_key)
    training = config.training_config()
    parents = [sft_policy["artifact_id"], reward_model["artifact_id"]]
    work = work_dir(storage.root, "ppo_policy", context.partition_key, parents, rm_calibration["calibrator"],
                    training)
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.jsonl").write_bytes(prompts_jsonl(preference_dataset, "train"))
    (work / "eval_prompts.jsonl").write_bytes(prompts_jsonl(preference_dataset, "validation"))
    (work / "sft.jsonl").write_bytes(sft_jsonl(preference_dataset, "train"))
    (work / "calibration.json").write_text(json.dumps({"calibrator": rm_calibration["calibrator"]}))
    (work / "config.json").write_text(json.dumps(training, indent=2))
    args = ["ppo", "--config", str(work / "config.json"), "--sft", sft_policy["artifact_id"],
            "--reward-model", reward_model["artifact_id"], "--calibration", str(work / "calibration.json"),
            "--prompts", str(work / "prompts.jsonl"), "--eval-prompts", str(work / "eval_prompts.jsonl"),
            "--sft-data", str(work / "sft.jsonl"), "--out", str(work), "--store", storage.root,
            "--dataset-id", dataset_id]
    for parent in parents:
        args += ["--parent", parent]
    reported, metadata = run_entrypoint(context, pipes_subprocess_client, storage, "rlhf_assets.policy.entrypoint",
                                        args)
    selected_kl = float(reported["selected_kl"])
    reference = {"artifact_id": reported["artifact_id"], "uri": reported.get("artifact_uri"),
                 "dataset_id": dataset_id, "sft_artifact_id": sft_policy["artifact_id"],
                 "reward_model_artifact_id": reward_model["artifact_id"], "selected_step": reported["selected_step"],
                 "selected_kl": selected_kl, "kl_budget": config.kl_budget,
                 "metrics": numeric({k: v for k, v in reported.items() if k.startswith(("selected_", "last_"))}),
                 "stop_reason": reported.get("stop_reason") or None}
    yield dg.Output(reference, metadata={**metadata, "work_dir": dg.MetadataValue.path(str(work))})
    yield dg.AssetCheckResult(check_name="kl_within_budget", passed=bool(selected_kl <= config.kl_budget),
                              metadata={"value": selected_kl, "threshold": config.kl_budget})
