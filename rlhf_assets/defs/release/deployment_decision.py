import dagster as dg

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.evaluation.gates import DecisionSettings, decide, gate_inputs
from rlhf_assets.registry.decisions import write_decision


class DeploymentDecisionConfig(dg.Config):
    """How the verdict acts on the gates (the thresholds themselves are the `release_thresholds` resource, shared
    with the blocking checks). Each field is a field of DecisionSettings (rlhf_assets/evaluation/gates.py)."""

    canary_share: float = DecisionSettings.canary_share
    """Share of traffic a canary gets."""
    escalate_min_uplift: float = DecisionSettings.escalate_min_uplift
    """The judge's uplift lower bound that turns a KL-over-limit reject into an escalation to a person."""
    require_ope_reliable: bool = DecisionSettings.require_ope_reliable
    """False: an unreliable OPE's interval is taken at face value (not recommended)."""


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"python"},
          io_manager_key="table_io_manager")
def deployment_decision(
    context: dg.AssetExecutionContext,
    config: DeploymentDecisionConfig,
    storage: StorageResource,
    release_thresholds: ReleaseThresholdsResource,
    ope_report: dict,
    ppo_policy: dict,
    sft_policy: dict,
    reward_model: dict,
    rm_calibration: dict,
):
    """promote / canary / reject / escalate from gates with three outcomes (pass, fail, inconclusive — each on a
    bootstrap interval): upstream blocking checks on this partition, reward-model accuracy, calibration, human–RM
    correlation, measured KL, OPE reliability and the independent judge's uplift. Missing evidence rejects."""
    checks = [{"check": s.name, "status": s.status, "detail": s.detail}
              for s in blocking_check_statuses(context.instance, context.partition_key)]
    thresholds = release_thresholds.thresholds()
    decision = decide(gate_inputs(ope_report, ppo_policy, rm_calibration, checks), thresholds,
                      DecisionSettings(**config.model_dump()))
    artifacts = {"policy": ppo_policy["artifact_id"], "reward_model": reward_model["artifact_id"],
                 "sft_policy": sft_policy["artifact_id"]}
    if rm_calibration.get("calibration_artifact_id"):
        artifacts["calibration"] = rm_calibration["calibration_artifact_id"]
    record = write_decision(storage.storage(), context.partition_key, {**decision.to_dict(), "artifacts": artifacts})
    context.log.info(f"{context.partition_key}: {decision.verdict} — {'; '.join(decision.reasons)}")
    return dg.Output(record, metadata={
        "verdict": decision.verdict, "canary_share": decision.canary_share if decision.verdict == "canary" else None,
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "-"),
        "gates": dg.MetadataValue.md(decision.markdown_table()),
        "upstream_checks": dg.MetadataValue.json(checks),
        "artifacts": dg.MetadataValue.json(artifacts),
    })
