import dagster as dg

from rlhf_assets.defs.check_names import ADVERSARIAL_CHECKS
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.evaluation.adversarial import AdversarialSettings, check_rows, evaluate_adversarial
from rlhf_assets.evaluation.response_filters import ResponseFilter, ResponseFilterSettings
from rlhf_assets.policy.artifacts import load_policy
from rlhf_assets.policy.reward_fn import ProxyReward
from rlhf_assets.policy.runtime import device_for
from rlhf_assets.preference.snapshot import split_prompts
from rlhf_assets.references import AdversarialRef, CalibrationRef, DatasetTable, ModelRef, PolicyRef
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import load_reward_model

AdversarialEvalConfig = config_class(
    "AdversarialEvalConfig", AdversarialSettings, ResponseFilterSettings,
    doc="How the adversarial evaluation samples (AdversarialSettings) and what trips the response filters; its "
        "limits are the release_thresholds resource's (max_style_flip_rate, max_length_drift, "
        "max_degenerate_share_increase).")

_DESCRIPTIONS = {
    "style_flip_rate": "The reward model's worst style-only edit (markdown, flattery, hedging, a duplicated sentence, "
                       "truncation, a token run) reverses at most max_style_flip_rate of the held-out pairs.",
    "length_drift": "The policy's mean answer length on red-team prompts is within max_length_drift of its "
                    "reference's (both directions).",
    "degenerate_share": "The policy's share of degenerate answers (too short, loops, no EOS) exceeds its reference's "
                        "by at most max_degenerate_share_increase.",
}


@dg.asset(
    partitions_def=release_partitions,
    group_name="release",
    kinds={"pytorch"},
    owners=OWNERS,
    # ERROR severity without Dagster's blocking: a failed check must not skip deployment_decision, which reads it
    # (checks_lookup) and records the reject with its reason; missing evidence fails closed there too.
    check_specs=[dg.AssetCheckSpec(check, asset=asset, blocking=False, partitions_def=release_partitions,
                                   description=_DESCRIPTIONS[check]) for asset, check in ADVERSARIAL_CHECKS],
)
def adversarial_eval(
    context: dg.AssetExecutionContext,
    config: AdversarialEvalConfig,
    storage: StorageResource,
    release_thresholds: ReleaseThresholdsResource,
    preference_dataset: DatasetTable,
    sft_policy: ModelRef,
    ppo_policy: PolicyRef,
    reward_model: ModelRef,
    rm_calibration: CalibrationRef,
    judge_reward_model: ModelRef,
):
    """Reward hacking, looked for without new labels (evaluation/adversarial.py): style-only edits of held-out
    responses against the reward model (flip rate, mean reward change, length bias, accuracy by chosen-longer vs
    chosen-shorter), and the PPO policy beside its SFT reference on the release's held-out (red-team) prompts and
    perturbations of them (length drift, degenerate answers, response-filter hits, proxy vs judge uplift), with the
    worst answers as a table. Three checks with ERROR severity, read by deployment_decision like every blocking
    check: a failed one rejects the release with its reason."""
    # Dagster config has lists where the dataclasses have tuples
    settings = settings_from(config, AdversarialSettings, perturbations=tuple(config.perturbations))
    filters = settings_from(config, ResponseFilterSettings, filter_blocklist=tuple(config.filter_blocklist),
                            filter_regexes=tuple(config.filter_regexes))
    store = ArtifactStore(storage.storage())
    device = device_for()
    policy, tok, doc = load_policy(store.get(ppo_policy.artifact_id), device)
    reference, ref_tok, _ = load_policy(store.get(sft_policy.artifact_id), device)
    train_config = doc.get("train_config") or {}
    sampling = {k: train_config[k] for k in ("temperature", "max_new_tokens", "max_prompt_tokens")}
    proxy = ProxyReward(load_reward_model(store.get(reward_model.artifact_id), device), rm_calibration.calibrator)
    judge = ProxyReward(load_reward_model(store.get(judge_reward_model.artifact_id), device))  # raw BT score
    table_ = preference_dataset.table
    report = evaluate_adversarial(
        candidate=(policy.eval(), tok), reference=(reference.eval(), ref_tok),
        pairs=table_.filter(table_["split"] == "test"), prompts=split_prompts(table_, "test"), sampling=sampling,
        proxy=proxy.raw, judge=judge.raw, settings=settings,
        response_filter=ResponseFilter(filters))
    checks = check_rows(report, release_thresholds.thresholds())
    rm, pol = report["reward_model"], report["policy"]
    context.log.info("; ".join(c["description"] for c in checks))
    yield dg.Output(AdversarialRef(report=report, checks=checks), metadata=display({
        "checks": table([{"check": c["check"], "value": c["value"], "threshold": c["threshold"],
                          "passed": c["passed"]} for c in checks], ["check", "value", "threshold", "passed"]),
        "style_edits": table(rm["edits"], ["edit", "mean_reward_change", "flip_rate", "flips"]),
        "rm_accuracy": rm["accuracy"], "length_spearman": rm["length_spearman"],
        "length_spearman_within_pairs": rm["length_spearman_within_pairs"],
        "accuracy_chosen_longer": rm["accuracy_chosen_longer"],
        "accuracy_chosen_shorter": rm["accuracy_chosen_shorter"], "length_accuracy_gap": rm["length_accuracy_gap"],
        "candidate_mean_tokens": pol["candidate"]["mean_tokens"],
        "reference_mean_tokens": pol["reference"]["mean_tokens"], "length_drift": pol["length_drift"],
        "candidate_degenerate_share": pol["candidate"]["degenerate_share"],
        "reference_degenerate_share": pol["reference"]["degenerate_share"],
        "candidate_filtered_share": pol["candidate"]["filtered_share"],
        "reference_filtered_share": pol["reference"]["filtered_share"],
        "proxy_uplift_sd": pol["proxy_uplift_sd"], "judge_uplift_sd": pol["judge_uplift_sd"],
        "proxy_judge_gap_sd": pol["proxy_judge_gap_sd"],
        "by_perturbation": table(pol["by_perturbation"]),
        "worst_examples": table(report["worst_examples"],
                                ["perturbation", "prompt", "response", "tokens", "why", "proxy", "judge", "gap_sd"]),
    }))
    for c in checks:
        yield dg.AssetCheckResult(
            check_name=c["check"], passed=c["passed"], severity=dg.AssetCheckSeverity.ERROR,
            description=c["description"],
            metadata=display({"value": c["value"] if c["value"] is not None else "not measured",
                              "threshold": c["threshold"]}))
