import json

import dagster as dg

from rlhf_assets.automation.log_cursor import LogCursor, new_log_rows
from rlhf_assets.automation.policy_guard import (
    escalations,
    live_guard_stats,
    live_rows,
    rows_from_cursor,
    rows_to_cursor,
)
from rlhf_assets.defs.jobs import apply_release_decision_job
from rlhf_assets.defs.resources import AutomationResource, NotifierResource, StorageResource
from rlhf_assets.defs.sensors.requests import move
from rlhf_assets.policy_serving.kl_limit import gated_kl_limit
from rlhf_assets.policy_serving.log import POLICY_LOG_DIR, POLICY_LOG_SCHEMA
from rlhf_assets.registry.aliases import Registry

NAME = "policy_guard_sensor"


@dg.sensor(jobs=[apply_release_decision_job], minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Reads `rlhf serve-policy`'s log (serving-logs/policy/) and measures, per release holding "
                       "production or canary, the share of its newest served responses the runtime guard caught and "
                       "their mean KL to the reference. Over the allowed divergence (automation resource: "
                       "max_guarded_share; the mean KL the release gate held it to, else max_live_mean_kl): records "
                       "an `escalate` entry in the registry history for a person, alerts, and moves the release out "
                       "— a canary is ended, production is rolled back to "
                       "the release before it. Reads only the log files written since its last tick (its cursor "
                       "keeps each release's newest responses). Every 60 s; starts stopped.")
def policy_guard_sensor(context: dg.SensorEvaluationContext, storage: StorageResource,
                        automation: AutomationResource, notifier: NotifierResource) -> dg.SensorResult:
    store, settings, alerts = storage.storage(), automation.settings(), notifier.notifier(context.log)
    registry = Registry(store)
    aliases, history = registry.aliases(), registry.history()
    seq = max([e["seq"] for e in history] or [0])
    cursor = json.loads(context.cursor) if context.cursor else {}
    new, log_cursor = new_log_rows(store, LogCursor.from_dict(cursor.get("log")), log_dir=POLICY_LOG_DIR,
                                   schema=POLICY_LOG_SCHEMA)
    rows = live_rows(rows_from_cursor(cursor.get("rows")), new, aliases, settings.policy_guard_window)
    stats = live_guard_stats(rows)
    runs = []
    own_limits = {s.release: limit for s in stats
                  if (limit := gated_kl_limit(store, s.release, s.policy_id)) is not None}
    for e in escalations(stats, aliases, history, settings, own_limits):
        what = (f"moving it out: {e.move.kind}" + (f" to {e.move.release}" if e.move.kind == "rollback" else "")
                if e.move else "no earlier release to roll back to: production stays, a person decides")
        registry.escalate(e.alias, e.release, reason=f"runtime guard: {e.trigger}; {what}", actor=NAME,
                          evidence=e.evidence)
        if e.move is not None:
            runs.append(move(store, NAME, e.move, seq))
        alerts.alert(NAME, f"escalate: {e.trigger}; {what}", e.evidence)
    measured = "; ".join(f"{s.alias} {s.release}: {s.guarded_share:.0%} guarded, mean KL {s.mean_kl:.2f} on {s.n}"
                         for s in stats) or "no served policy responses"
    return dg.SensorResult(run_requests=runs, skip_reason=None if runs else f"{measured}; nothing to do",
                           cursor=json.dumps({"log": log_cursor.to_dict(), "rows": rows_to_cursor(rows)}))
