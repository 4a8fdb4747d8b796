import json
from datetime import UTC, datetime

import dagster as dg

from rlhf_assets.automation.actions import Action
from rlhf_assets.automation.drift_watch import VersionWindow, feed
from rlhf_assets.automation.ledger import in_cooldown
from rlhf_assets.automation.log_cursor import LogCursor, new_log_rows
from rlhf_assets.defs.check_names import PROMPT_DRIFT, SCORE_DRIFT
from rlhf_assets.defs.jobs import release_chain_job
from rlhf_assets.defs.resources import AutomationResource, NotifierResource, StorageResource
from rlhf_assets.defs.sensors.requests import retrain
from rlhf_assets.evaluation.drift import EMBEDDING_TESTS, PAIR_TESTS, SCORE_TESTS

NAME = "drift_sensor"


def evaluations(w: VersionWindow, day: str) -> list[dg.AssetCheckEvaluation | dg.AssetObservation]:
    """The window as two check evaluations — score drift (PSI, KS, Wasserstein, mean shift, expected accuracy) and prompt drift
    (domain classifier AUC, MMD), each statistic next to its calibrated threshold; not partitioned (see
    defs/monitoring/checks.py), the day in their metadata — and as one observation on serving_log's day."""
    out: list[dg.AssetCheckEvaluation | dg.AssetObservation] = []
    if w.result is None:  # a window that went into the version's production reference
        return [dg.AssetObservation(asset_key="serving_log", partition=day, metadata={
            "measurement": "drift reference window", "artifact_id": w.artifact_id, "alias": w.alias or "",
            "collected_rows": w.collected})]
    for check_name, names in ((SCORE_DRIFT, SCORE_TESTS + PAIR_TESTS), (PROMPT_DRIFT, EMBEDDING_TESTS)):
        tests = [t for t in w.result.tests if t.name in names]
        alarmed = [t.name for t in tests if t.alarm]
        metadata = {"artifact_id": w.artifact_id, "release": w.release or "", "alias": w.alias or "", "day": day,
                    "window": w.result.window, "persistent_alarm": w.persistent,
                    "rule": w.result.calibration.get("rule", "")}
        if check_name == SCORE_DRIFT:
            metadata["pooled_mean_shift_z"] = round(w.pooled_z, 3) if w.pooled_z is not None else None
        for t in tests:
            metadata[t.name] = round(t.statistic, 5) if t.statistic is not None else None
            metadata[f"{t.name}_threshold"] = round(t.threshold, 5) if t.threshold is not None else None
        out.append(dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("serving_log"), check_name=check_name, passed=not alarmed,
            severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
            description=(f"{w.alias} {w.artifact_id[:12]}: " + (", ".join(alarmed) + " over threshold" if alarmed
                                                                 else "within the calibrated null")
                         + (" — persistent" if w.persistent else ""))))
    out.append(dg.AssetObservation(asset_key="serving_log", partition=day, metadata={
        "measurement": "drift window", "artifact_id": w.artifact_id, "alias": w.alias or "", "alarm": w.result.alarm,
        "persistent_alarm": w.persistent,
        **{t.name: round(t.statistic, 5) for t in w.result.tests if t.statistic is not None}}))
    return out


@dg.sensor(job=release_chain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Reads the serving log's new rows and checks each served version's traffic, window by window: "
                       "its first drift_reference_windows windows become its production reference (calibrated then; "
                       "the release's drift_reference gives the window size and settings), later windows are "
                       "compared with it — score drift (PSI, KS, normalised Wasserstein, the mean shift, "
                       "the calibrated model's expected pairwise accuracy) and prompt drift (domain-classifier AUC, MMD on the prompt "
                       "embeddings), each against a threshold calibrated on reference-versus-reference windows "
                       "(mean + k·sd). When persist_k of the last persist_n windows of the production version "
                       "alarm, or their mean score shift pooled is over k standard errors, requests a retrain (a new release partition and the release chain, tagged with the "
                       "evidence; then a cooldown). Records score_drift and prompt_drift on serving_log. Every 60 s; "
                       "starts stopped.")
def drift_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, automation: AutomationResource,
                 notifier: NotifierResource) -> dg.SensorResult:
    store, settings, alerts = storage.storage(), automation.settings(), notifier.notifier(context.log)
    cursor = json.loads(context.cursor) if context.cursor else {}
    rows, log_cursor = new_log_rows(store, LogCursor.from_dict(cursor.get("log")))
    drift_settings = automation.drift_settings()
    windows, missing = feed(store, rows, drift_settings, settings.drift_reference_windows)
    if missing:
        context.log.info(f"no drift reference for {', '.join(m[:12] for m in missing)}: their traffic is not checked "
                         "(materialize drift_reference for their release)")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    events = [e for w in windows for e in evaluations(w, day)]
    collecting = [w for w in windows if w.result is None]
    if collecting:
        context.log.info(f"collecting the production drift reference of {collecting[-1].artifact_id[:12]}: "
                         f"{collecting[-1].collected} rows")
    partitions, runs = [], []
    alarm = next((w for w in reversed(windows) if w.persistent and w.alias == "production"), None)
    if alarm is not None:
        drifted = [t.name for t in alarm.result.tests if t.alarm]
        if alarm.pooled_alarm:
            drifted.append(f"the mean score shift pooled over {drift_settings.persist_n} windows "
                           f"({alarm.pooled_z:.1f} standard errors)")
        action = Action("retrain", f"{alarm.alias} {alarm.artifact_id[:12]} ({alarm.release}): persistent drift in "
                                   + ", ".join(drifted),
                        {"artifact_id": alarm.artifact_id, "release": alarm.release, "pooled_z": alarm.pooled_z,
                         "tests": [t.to_dict() for t in alarm.result.tests if t.measured]})
        last = in_cooldown(store, settings.retrain_cooldown_s)
        if last is None:
            add, run = retrain(store, NAME, action)
            partitions.append(add)
            runs.append(run)
            alerts.alert(NAME, action.trigger, action.evidence)
        else:
            context.log.info(f"drift persists but {last['release']} was requested at {last['time']}: same episode")
    cursor["log"] = log_cursor.to_dict()
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=partitions, asset_events=events,
                           cursor=json.dumps(cursor),
                           skip_reason=None if (runs or events) else "no full window of new traffic")
