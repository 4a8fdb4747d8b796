import dagster as dg

from rlhf_assets.defs.check_names import RELEASE_APPROVED
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, interval, rounded, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.evaluation.gates import DecisionSettings, GateInputs, decide
from rlhf_assets.references import AdversarialRef, CalibrationRef, DecisionRef, ModelRef, OPERef, PolicyRef
from rlhf_assets.registry.decisions import write_decision

DeploymentDecisionConfig = config_class(
    "DeploymentDecisionConfig", DecisionSettings,
    doc="How the verdict acts on the gates (the thresholds themselves are the `release_thresholds` resource, shared "
        "with the blocking checks).")


#: Verdicts that let the release go live (all of it, or its canary share); reject and escalate move nothing.
APPROVED_VERDICTS = ("promote", "canary")


@dg.asset(
    partitions_def=release_partitions,
    group_name="release",
    kinds={"python"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec(
        RELEASE_APPROVED, asset="deployment_decision", blocking=False, partitions_def=release_partitions,
        description="The verdict at a glance: passes for promote and canary; reject and escalate WARN (never block: "
                    "production_release still runs and records that nothing moved, or an approved override).")],
)
def deployment_decision(
    context: dg.AssetExecutionContext,
    config: DeploymentDecisionConfig,
    storage: StorageResource,
    release_thresholds: ReleaseThresholdsResource,
    ope_report: OPERef,
    ppo_policy: PolicyRef,
    sft_policy: ModelRef,
    reward_model: ModelRef,
    rm_calibration: CalibrationRef,
    adversarial_eval: AdversarialRef,  # its checks are read from the instance with the other blocking checks
):
    """promote / canary / reject / escalate from gates with three outcomes (pass, fail, inconclusive — each on a
    bootstrap interval): upstream blocking checks on this partition, reward-model accuracy, calibration, human–RM
    correlation, measured KL, OPE reliability and the independent judge's uplift; the adversarial evaluation's checks
    (style-only flip rate, length drift, degenerate answers) are upstream checks. Missing evidence rejects. The
    verdict is the materialization's `rlhf/verdict` tag, and the `release_approved` check warns on reject and
    escalate."""
    statuses = blocking_check_statuses(context.instance, context.partition_key)
    checks = [{"check": s.name, "status": s.status, "detail": s.detail} for s in statuses]
    decision = decide(GateInputs.from_release(ope_report, ppo_policy, rm_calibration, checks),
                      release_thresholds.thresholds(), settings_from(config, DecisionSettings))
    artifacts = {"policy": ppo_policy.artifact_id, "reward_model": reward_model.artifact_id,
                 "sft_policy": sft_policy.artifact_id}
    if rm_calibration.calibration_artifact_id:
        artifacts["calibration"] = rm_calibration.calibration_artifact_id
    record = write_decision(storage.storage(), context.partition_key, {**decision.to_dict(), "artifacts": artifacts})
    context.log.info(f"{context.partition_key}: {decision.verdict} — {'; '.join(decision.reasons)}")
    ref = DecisionRef(release=context.partition_key, verdict=decision.verdict, artifacts=artifacts,
                      canary_share=decision.canary_share, reasons=list(decision.reasons), gates=decision.gates,
                      record=record)
    reasons = dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "-")
    proxy = decision.inputs.proxy_uplift
    # For display (the record at registry/decisions/ keeps every id and value whole): the reasons once, as a list;
    # upstream checks with their run; artifact ids to 16 characters.
    shown = {"verdict": decision.verdict}
    if decision.verdict == "canary":
        shown["canary_share"] = decision.canary_share
    yield dg.Output(ref, tags={"rlhf/verdict": decision.verdict}, metadata=display({
        **shown,
        "reasons": reasons,
        "gates": table(decision.display_rows(), ["gate", "value", "interval", "threshold", "outcome"]),
        "proxy_uplift": "not measured" if proxy.value is None else
        f"{rounded(proxy.value)} {interval(proxy.ci_low, proxy.ci_high)} (reported, never gates)",
        "upstream_checks": table([{"check": s.name, "status": s.status, "run": (s.run_id or "")[:8],
                                   "detail": "" if s.status == "passed" else s.detail} for s in statuses],
                                 ["check", "status", "run", "detail"]),
        "artifacts": table([{"role": k, "artifact_id": f"{v[:16]}…"} for k, v in artifacts.items()],
                           ["role", "artifact_id"]),
    }))
    effect = {"promote": "the release goes to production",
              "canary": f"the release serves {decision.canary_share or 0:.0%} of the traffic as the canary"}
    yield dg.AssetCheckResult(
        check_name=RELEASE_APPROVED, passed=decision.verdict in APPROVED_VERDICTS, severity=dg.AssetCheckSeverity.WARN,
        description=f"{decision.verdict}: {effect.get(decision.verdict, 'nothing moves without an approved override')}",
        metadata={"verdict": decision.verdict, "reasons": reasons})
