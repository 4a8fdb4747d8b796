import dagster as dg

from rlhf_assets.automation.correlation import live_correlations
from rlhf_assets.defs.check_names import HUMAN_RM_CORRELATION, PROMPT_DRIFT, SCORE_DRIFT
from rlhf_assets.defs.resources import AutomationResource, StorageResource
from rlhf_assets.registry.aliases import Registry


# The serving_log checks are not partitioned: Dagster stores one runless (sensor-reported) evaluation per check and
# partition at most, and the sensors report one per window. Each evaluation names its day; the per-day history is in
# serving_log's observations (one per window).
@dg.asset_check(asset="serving_log", name=HUMAN_RM_CORRELATION,
                description="Spearman(human audit preference, the production reward model's calibrated P(a ≻ b)) on "
                            "the newest audited pairs: fails when its interval lies wholly under the automation "
                            "resource's min_human_rm_correlation. Recorded by human_rm_correlation_sensor as audits "
                            "arrive; runnable here.")
def human_rm_correlation(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                         automation: AutomationResource) -> dg.AssetCheckResult:
    from rlhf_assets.defs.sensors.correlation import evaluation

    store, settings = storage.storage(), automation.settings()
    production = (Registry(store).current("production") or {}).get("artifacts", {}).get("reward_model")
    results = [c for c in live_correlations(store, settings) if c.artifact_id == production]
    if not results:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description="no audited pair served by the production model yet")
    e = evaluation(results[0], settings.min_human_rm_correlation, _today())
    return dg.AssetCheckResult(passed=e.passed, severity=e.severity, description=e.description,
                               metadata=dict(e.metadata))


def _day_window(context: dg.AssetCheckExecutionContext, storage: StorageResource, names: tuple[str, ...]
                ) -> dg.AssetCheckResult:
    """The production version's newest full window (of today's traffic) against its drift reference."""
    from rlhf_assets.automation.drift_watch import load_reference
    from rlhf_assets.evaluation.drift import Sample, check
    from rlhf_assets.serving.log import read_serving_log

    store = storage.storage()
    production = (Registry(store).current("production") or {}).get("artifacts", {}).get("reward_model")
    log = read_serving_log(store, _today())
    log = log.filter(log["artifact_id"] == production) if production and log.height else log.head(0)
    loaded = load_reference(store, production) if production else None
    if loaded is None or log.height < loaded[1].window:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description="not measured: no drift reference for the production model, or less "
                                               "than one window of its traffic on this day")
    result = check(loaded[1], loaded[0], Sample.from_log(log.sort("time")))
    tests = [t for t in result.tests if t.name in names]
    alarmed = [t.name for t in tests if t.alarm]
    return dg.AssetCheckResult(
        passed=not alarmed, severity=dg.AssetCheckSeverity.WARN,
        description=(", ".join(alarmed) + " over threshold") if alarmed else "within the calibrated null",
        metadata={"artifact_id": production, **{t.name: t.statistic for t in tests},
                  **{f"{t.name}_threshold": t.threshold for t in tests}})


@dg.asset_check(asset="serving_log", name=SCORE_DRIFT,
                description="Score drift of the production model's served traffic (PSI, KS, Wasserstein and mean "
                            "shift / reference sd, expected pairwise accuracy) against its release's drift reference, each over a "
                            "threshold calibrated on reference-versus-reference windows. Recorded by drift_sensor per "
                            "window; runnable here on the day's newest window.")
def score_drift(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    from rlhf_assets.evaluation.drift import PAIR_TESTS, SCORE_TESTS

    return _day_window(context, storage, SCORE_TESTS + PAIR_TESTS)


@dg.asset_check(asset="serving_log", name=PROMPT_DRIFT,
                description="Prompt drift of the production model's served traffic (domain-classifier AUC and MMD on "
                            "the prompt embeddings) against its release's drift reference. Recorded by drift_sensor "
                            "per window; runnable here on today's newest window.")
def prompt_drift(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    from rlhf_assets.evaluation.drift import EMBEDDING_TESTS

    return _day_window(context, storage, EMBEDDING_TESTS)


def _today() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%d")
