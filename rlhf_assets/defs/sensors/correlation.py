import json
from datetime import UTC, datetime

import dagster as dg

from rlhf_assets.automation.actions import correlation_actions
from rlhf_assets.automation.correlation import Correlation, live_correlations
from rlhf_assets.automation.drift_state import drift_ok, read_state
from rlhf_assets.automation.ledger import in_cooldown
from rlhf_assets.automation.log_cursor import LogCursor, new_log_rows
from rlhf_assets.automation.served_index import add_to_index
from rlhf_assets.defs.check_names import HUMAN_RM_CORRELATION
from rlhf_assets.defs.jobs import apply_release_decision_job, release_chain_job
from rlhf_assets.defs.resources import AutomationResource, NotifierResource, StorageResource
from rlhf_assets.defs.sensors.requests import move, retrain
from rlhf_assets.registry.aliases import Registry

NAME = "human_rm_correlation_sensor"


def evaluation(c: Correlation, threshold: float, day: str) -> dg.AssetCheckEvaluation:
    """The check's evaluation (not partitioned: see defs/monitoring/checks.py; ``day`` is in its metadata)."""
    passed = not (c.measured and c.ci_high is not None and c.ci_high < threshold)
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("serving_log"), check_name=HUMAN_RM_CORRELATION, passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{c.alias} {c.artifact_id[:12]}: Spearman {c.spearman:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}] "
                     f"on {c.n} audited pairs (threshold {threshold})" if c.measured else
                     f"{c.alias} {c.artifact_id[:12]}: {c.n} audited pairs, not enough to measure"),
        metadata={**{k: v for k, v in c.to_dict().items() if v is not None}, "threshold": threshold, "day": day})


def observation(c: Correlation, threshold: float, day: str) -> dg.AssetObservation:
    """The same numbers on serving_log's day: its per-day history in the UI."""
    return dg.AssetObservation(asset_key="serving_log", partition=day,
                               metadata={"measurement": "human_rm_correlation", "threshold": threshold,
                                         **{k: v for k, v in c.to_dict().items() if v is not None}})


@dg.sensor(jobs=[release_chain_job, apply_release_decision_job], minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Joins the human audits landing in landing/audits/date=…/ with what the service scored (the "
                       "serving log's compared pairs) and measures, per served version, Spearman(humans, calibrated "
                       "P(a ≻ b)) with a bootstrap interval over the newest audited pairs. Production: a fall under "
                       "the threshold (or far below the release's baseline) requests a retrain (new release + release "
                       "chain, after a cooldown); a fall under the rollback threshold rolls production back to the "
                       "last good release. Canary: enough audits with the interval above the threshold and no drift "
                       "alarm graduate it; an interval below ends it. Records the human_rm_correlation check on "
                       "serving_log. Every 60 s; starts stopped.")
def human_rm_correlation_sensor(context: dg.SensorEvaluationContext, storage: StorageResource,
                                automation: AutomationResource, notifier: NotifierResource) -> dg.SensorResult:
    store, settings, alerts = storage.storage(), automation.settings(), notifier.notifier(context.log)
    cursor = json.loads(context.cursor) if context.cursor else {}
    rows, log_cursor = new_log_rows(store, LogCursor.from_dict(cursor.get("log")))
    add_to_index(store, rows)
    results = live_correlations(store, settings)
    registry = Registry(store)
    aliases, history = registry.aliases(), registry.history()
    seq = max([e["seq"] for e in history] or [0])
    actions = correlation_actions(results, aliases, history, settings,
                                  drift_ok(read_state(store), settings.canary_min_windows))
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    threshold = settings.min_human_rm_correlation
    events = [e for c in results for e in (evaluation(c, threshold, today), observation(c, threshold, today))]
    partitions, runs = [], []
    for action in actions:
        if action.kind == "retrain":
            last = in_cooldown(store, settings.retrain_cooldown_s)
            if last is not None:
                context.log.info(f"retrain wanted ({action.trigger}) but {last['release']} was requested at "
                                 f"{last['time']}: same episode, cooldown {settings.retrain_cooldown_s:.0f} s")
                continue
            add, run = retrain(store, NAME, action)
            partitions.append(add)
            runs.append(run)
        else:
            runs.append(move(store, NAME, action, seq))
        alerts.alert(NAME, f"{action.kind}: {action.trigger}", action.evidence)
    cursor["log"] = log_cursor.to_dict()
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=partitions, asset_events=events,
                           cursor=json.dumps(cursor),
                           skip_reason=None if runs else f"{len(results)} served version(s) measured; nothing to do")
