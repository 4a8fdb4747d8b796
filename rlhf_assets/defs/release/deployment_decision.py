import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.evaluation.gates import DecisionSettings, GateInputs, decide
from rlhf_assets.references import CalibrationRef, DecisionRef, ModelRef, OPERef, PolicyRef
from rlhf_assets.registry.decisions import write_decision

DeploymentDecisionConfig = config_class(
    "DeploymentDecisionConfig", DecisionSettings,
    doc="How the verdict acts on the gates (the thresholds themselves are the `release_thresholds` resource, shared "
        "with the blocking checks).")


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"python"})
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
) -> dg.Output[DecisionRef]:
    """promote / canary / reject / escalate from gates with three outcomes (pass, fail, inconclusive — each on a
    bootstrap interval): upstream blocking checks on this partition, reward-model accuracy, calibration, human–RM
    correlation, measured KL, OPE reliability and the independent judge's uplift. Missing evidence rejects."""
    checks = [{"check": s.name, "status": s.status, "detail": s.detail}
              for s in blocking_check_statuses(context.instance, context.partition_key)]
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
    return dg.Output(ref, metadata={
        "verdict": decision.verdict, "canary_share": decision.canary_share if decision.verdict == "canary" else None,
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "-"),
        "gates": dg.MetadataValue.md(decision.markdown_table()),
        "upstream_checks": dg.MetadataValue.json(checks),
        "artifacts": dg.MetadataValue.json(artifacts),
    })
