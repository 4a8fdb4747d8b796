import dagster as dg

from rlhf_assets.automation.correlation import live_correlations
from rlhf_assets.defs.check_names import HUMAN_RM_CORRELATION
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import AutomationResource, StorageResource
from rlhf_assets.registry.aliases import Registry


@dg.asset_check(asset="serving_log", name=HUMAN_RM_CORRELATION, partitions_def=daily_partitions,
                description="Spearman(human audit preference, the production reward model's calibrated P(a ≻ b)) on "
                            "the day's audited pairs: fails when its interval lies wholly under the automation "
                            "resource's min_human_rm_correlation. Recorded by human_rm_correlation_sensor as audits "
                            "arrive; runnable here for any day.")
def human_rm_correlation(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                         automation: AutomationResource) -> dg.AssetCheckResult:
    from rlhf_assets.defs.sensors.correlation import evaluation

    store, settings = storage.storage(), automation.settings()
    production = (Registry(store).current("production") or {}).get("artifacts", {}).get("reward_model")
    results = [c for c in live_correlations(store, settings, context.partition_key) if c.artifact_id == production]
    if not results:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description="no audited pair served by the production model on this day")
    e = evaluation(results[0], settings.min_human_rm_correlation, context.partition_key)
    return dg.AssetCheckResult(passed=e.passed, severity=e.severity, description=e.description,
                               metadata=dict(e.metadata))
