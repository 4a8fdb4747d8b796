import dagster as dg

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import failed_blocking_checks
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.evaluation.gates import GateInputs, GateThresholds, decide
from rlhf_assets.registry.decisions import write_decision


class DeploymentDecisionConfig(dg.Config):
    """Gate thresholds; each is a field of GateThresholds (rlhf_assets/evaluation/gates.py) with the same default."""

    min_uplift_lower_bound: float = GateThresholds.min_uplift_lower_bound
    require_ope_reliable: bool = GateThresholds.require_ope_reliable
    max_kl: float = GateThresholds.max_kl
    min_rm_test_accuracy: float = GateThresholds.min_rm_test_accuracy
    max_calibrated_ece: float = GateThresholds.max_calibrated_ece
    min_human_rm_correlation: float = GateThresholds.min_human_rm_correlation
    canary_share: float = GateThresholds.canary_share
    escalate_min_uplift: float = GateThresholds.escalate_min_uplift


def gate_inputs(ope: dict, ppo: dict, calibration: dict, failed: list[str]) -> GateInputs:
    report = calibration["report"]
    return GateInputs(
        uplift=ope["uplift"]["value"], uplift_ci_low=ope["uplift"]["ci_low"], uplift_ci_high=ope["uplift"]["ci_high"],
        ope_reliable=bool(ope["reliable"]), ope_reason=ope.get("reason"), kl=ppo.get("selected_kl"),
        rm_test_accuracy=report.get("accuracy"), calibrated_ece=report.get("ece_after"),
        human_rm_correlation=(calibration.get("human_correlation") or {}).get("spearman"),
        failed_upstream_checks=failed)


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"python"},
          io_manager_key="table_io_manager")
def deployment_decision(
    context: dg.AssetExecutionContext,
    config: DeploymentDecisionConfig,
    storage: StorageResource,
    ope_report: dict,
    ppo_policy: dict,
    sft_policy: dict,
    reward_model: dict,
    rm_calibration: dict,
):
    """promote / canary / reject / escalate: every gate (OPE uplift and reliability, KL, reward-model accuracy,
    calibration, human–RM correlation, upstream blocking checks) with its measured value and threshold."""
    failed = failed_blocking_checks(context.instance, context.partition_key)
    decision = decide(gate_inputs(ope_report, ppo_policy, rm_calibration, failed), GateThresholds(**config.model_dump()))
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
        "failed_upstream_checks": dg.MetadataValue.json(failed), "artifacts": dg.MetadataValue.json(artifacts),
    })
