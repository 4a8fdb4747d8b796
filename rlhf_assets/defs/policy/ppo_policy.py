import json

import dagster as dg

from rlhf_assets.defs.check_names import CALIBRATION_BLOCKING_CHECKS, KL_WITHIN_BUDGET
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, interval
from rlhf_assets.defs.metadata import table as metadata_table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.defs.training import POLICY_PPO, TRAINING_RETRY_POLICY, TrainingLauncherResource, launch_training
from rlhf_assets.evaluation.evidence import outcome
from rlhf_assets.policy.config import PPOConfig
from rlhf_assets.policy.kl_check import KLCheckSettings, measure_kl
from rlhf_assets.policy.runtime import device_for
from rlhf_assets.preference.snapshot import pairs_jsonl, prompts_jsonl, sft_jsonl, split_prompts
from rlhf_assets.references import CalibrationRef, DatasetTable, ModelRef, PolicyRef

#: The per-step columns the UI's history table shows (every metric of every step: metrics.jsonl in the work dir).
HISTORY_COLUMNS = ("step", "proxy_reward", "kl", "beta", "entropy", "clip_frac", "approx_kl", "response_length",
                   "no_eos_share")

PPOPolicyConfig = config_class(
    "PPOPolicyConfig", PPOConfig, KLCheckSettings,
    doc="PPO's settings (PPOConfig) and how the kl_within_budget check samples (KLCheckSettings, not passed to PPO).")


@dg.asset(
    partitions_def=release_partitions,
    group_name="policy",
    kinds={"pytorch", "transformers"},
    owners=OWNERS,
    retry_policy=TRAINING_RETRY_POLICY,
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
    training_launcher: TrainingLauncherResource,
    preference_dataset: DatasetTable,
    sft_policy: ModelRef,
    reward_model: ModelRef,
    rm_calibration: CalibrationRef,
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
                         "; ".join(f"{s.name} {s.status} ({s.detail})" for s in upstream),
                         allow_retries=False)
    ppo, kl_check = settings_from(config, PPOConfig), settings_from(config, KLCheckSettings)
    table = preference_dataset.table
    parents = [sft_policy.artifact_id, reward_model.artifact_id]
    run = launch_training(
        context, training_launcher, storage, POLICY_PPO, ppo, dataset_id=preference_dataset.dataset_id,
        parents=parents, key=[rm_calibration.calibrator],
        inputs={"--prompts": ("prompts.jsonl", prompts_jsonl(table, "train")),
                "--eval-prompts": ("eval_prompts.jsonl", prompts_jsonl(table, "validation")),
                "--sft-data": ("sft.jsonl", sft_jsonl(table, "train")),
                "--length-pairs": ("length_pairs.jsonl", pairs_jsonl(table, "validation")),
                "--calibration": ("calibration.json", json.dumps({"calibrator": rm_calibration.calibrator}).encode())},
        args=["--sft", sft_policy.artifact_id, "--reward-model", reward_model.artifact_id])
    selected_kl = float(run.reported["selected_kl"])
    thresholds = release_thresholds.thresholds()
    limit = thresholds.kl_limit(ppo.kl_budget)
    kl = measure_kl(storage.storage(), run.artifact_id, sft_policy.artifact_id, split_prompts(table, "test"),
                    n_prompts=kl_check.kl_check_prompts, samples_per_prompt=kl_check.kl_check_samples_per_prompt,
                    seed=kl_check.kl_check_seed, n_boot=thresholds.n_bootstrap, confidence=thresholds.confidence,
                    bootstrap_seed=thresholds.seed, device=device_for())
    measured = {"value": kl["value"], "ci_low": kl["ci_low"], "ci_high": kl["ci_high"], "limit": limit,
                "kl_budget": ppo.kl_budget, "outcome": outcome(kl["ci_low"], kl["ci_high"], limit, "<="),
                "n_prompts": kl["n_prompts"], "seed": kl["seed"]}
    context.log.info(f"measured KL {kl['value']} [{kl['ci_low']}, {kl['ci_high']}] on {kl['samples']} fresh test "
                     f"samples (limit {limit}; the trainer's own selected_kl {selected_kl:.4f})")
    yield run.output(PolicyRef(
        artifact_id=run.artifact_id, kind="ppo_policy", dataset_id=preference_dataset.dataset_id, uri=run.uri,
        parents=tuple(parents), metrics=run.metrics(("selected_", "last_")), sft_artifact_id=sft_policy.artifact_id,
        reward_model_artifact_id=reward_model.artifact_id, selected_step=run.reported["selected_step"],
        selected_kl=selected_kl, kl_budget=ppo.kl_budget, measured_kl=measured,
        stop_reason=run.reported.get("stop_reason") or None),
        history=metadata_table(run.reported.get("history") or [], HISTORY_COLUMNS))
    # A hard constraint: the point estimate decides; the interval's outcome is reported for the gate and the UI.
    passed = kl["value"] is not None and kl["value"] <= limit
    yield dg.AssetCheckResult(check_name=KL_WITHIN_BUDGET, passed=bool(passed), metadata=display({
        **{k: measured[k] for k in ("value", "ci_low", "ci_high")}, "threshold": limit, "kl_budget": ppo.kl_budget,
        "outcome": measured["outcome"], "n_prompts": kl["n_prompts"], "samples": kl["samples"], "seed": kl["seed"],
        "selected_kl": selected_kl, "quantiles": dg.MetadataValue.json(kl["quantiles"])}),
        description="not measured" if kl["value"] is None else
        f"measured KL {kl['value']:.4g} nats {'≤' if passed else '>'} the limit {limit:.4g} "
        f"(interval {interval(kl['ci_low'], kl['ci_high'])})")
