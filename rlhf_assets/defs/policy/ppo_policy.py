import json
from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.check_names import CALIBRATION_BLOCKING_CHECKS, KL_WITHIN_BUDGET
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.defs.training import numeric, run_entrypoint, work_dir
from rlhf_assets.evaluation.evidence import outcome
from rlhf_assets.policy.config import PPOConfig
from rlhf_assets.policy.kl_check import KL_CHECK_PROMPTS, KL_CHECK_SEED, measure_kl
from rlhf_assets.policy.runtime import device_for
from rlhf_assets.preference.snapshot import pinned_dataset_id, prompts_jsonl, sft_jsonl


class PPOPolicyConfig(dg.Config):
    """PPO settings, each a field of PPOConfig (rlhf_assets/policy/config.py) with the same default; and the
    `kl_check_*` settings of the kl_within_budget measurement (rlhf_assets/policy/kl_check.py), not passed to PPO."""

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
    kl_check_prompts: int = KL_CHECK_PROMPTS
    """kl_within_budget: held-out (test-split) prompts the stored policy is sampled on to measure its KL."""
    kl_check_samples_per_prompt: int = 1
    """kl_within_budget: fresh responses sampled per prompt (the bootstrap resamples prompts)."""
    kl_check_seed: int = KL_CHECK_SEED
    """kl_within_budget: the measurement's own sampling seed (not PPO's rollout or eval seeds)."""

    def training_config(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None and not k.startswith("kl_check_")}


@dg.asset(
    partitions_def=release_partitions,
    group_name="policy",
    kinds={"pytorch", "transformers"},
    io_manager_key="table_io_manager",
    check_specs=[dg.AssetCheckSpec(KL_WITHIN_BUDGET, asset="ppo_policy", blocking=True,
                                   partitions_def=release_partitions,
                                   description="KL(policy ‖ SFT reference), re-measured from the stored artifacts on "
                                               "fresh held-out samples, is within the release's KL limit.")],
)
def ppo_policy(
    context: dg.AssetExecutionContext,
    config: PPOPolicyConfig,
    storage: StorageResource,
    release_thresholds: ReleaseThresholdsResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    preference_dataset: pl.DataFrame,
    sft_policy: dict,
    reward_model: dict,
    rm_calibration: dict,
):
    """PPO of the SFT policy against the calibrated reward model with a KL penalty to the frozen SFT reference
    (`rlhf policy ppo` through Dagster Pipes). Keeps the checkpoint with the best held-out proxy reward inside the
    KL budget; reward vs √KL, KL and β, and response length are plotted in the metadata. The blocking
    `kl_within_budget` check does not trust the trainer's own KL: it loads the stored policy and its SFT reference
    and measures KL(π ‖ π_ref) on fresh samples of held-out test prompts (policy/kl_check.py)."""
    # Dagster blocks on a failed check only inside the run that evaluated it: a later policy-only run must not train
    # against a calibration whose blocking checks failed or were never measured on this partition.
    upstream = [s for s in blocking_check_statuses(context.instance, context.partition_key, CALIBRATION_BLOCKING_CHECKS)
                if s.status != "passed"]
    if upstream:
        raise dg.Failure("rm_calibration's blocking checks did not pass for this release: " +
                         "; ".join(f"{s.name} {s.status} ({s.detail})" for s in upstream))
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
    thresholds = release_thresholds.thresholds()
    limit = thresholds.kl_limit(config.kl_budget)
    test_prompts = (preference_dataset.filter(pl.col("split") == "test").select("prompt").unique(maintain_order=True)
                    ["prompt"].to_list())
    kl = measure_kl(storage.storage(), reported["artifact_id"], sft_policy["artifact_id"], test_prompts,
                    n_prompts=config.kl_check_prompts, samples_per_prompt=config.kl_check_samples_per_prompt,
                    seed=config.kl_check_seed, n_boot=thresholds.n_bootstrap, confidence=thresholds.confidence,
                    bootstrap_seed=thresholds.seed, device=device_for())
    measured = {"value": kl["value"], "ci_low": kl["ci_low"], "ci_high": kl["ci_high"], "limit": limit,
                "kl_budget": config.kl_budget, "outcome": outcome(kl["ci_low"], kl["ci_high"], limit, "<="),
                "n_prompts": kl["n_prompts"], "seed": kl["seed"]}
    context.log.info(f"measured KL {kl['value']} [{kl['ci_low']}, {kl['ci_high']}] on {kl['samples']} fresh test "
                     f"samples (limit {limit}; the trainer's own selected_kl {selected_kl:.4f})")
    reference = {"artifact_id": reported["artifact_id"], "uri": reported.get("artifact_uri"),
                 "dataset_id": dataset_id, "sft_artifact_id": sft_policy["artifact_id"],
                 "reward_model_artifact_id": reward_model["artifact_id"], "selected_step": reported["selected_step"],
                 "selected_kl": selected_kl, "kl_budget": config.kl_budget, "measured_kl": measured,
                 "metrics": numeric({k: v for k, v in reported.items() if k.startswith(("selected_", "last_"))}),
                 "stop_reason": reported.get("stop_reason") or None}
    yield dg.Output(reference, metadata={**metadata, "work_dir": dg.MetadataValue.path(str(work))})
    # A hard constraint: the point estimate decides; the interval's outcome is reported for the gate and the UI.
    passed = kl["value"] is not None and kl["value"] <= limit
    yield dg.AssetCheckResult(check_name=KL_WITHIN_BUDGET, passed=bool(passed), metadata={
        **{k: measured[k] for k in ("value", "ci_low", "ci_high")}, "threshold": limit, "kl_budget": config.kl_budget,
        "outcome": measured["outcome"], "n_prompts": kl["n_prompts"], "samples": kl["samples"], "seed": kl["seed"],
        "selected_kl": selected_kl, "quantiles": dg.MetadataValue.json(kl["quantiles"])})
