import json

import dagster as dg

from rlhf_assets.automation.annotators import AnnotatorReview, flag, review
from rlhf_assets.defs.check_names import ANNOTATORS_STABLE
from rlhf_assets.defs.io_manager import StoredPartitions
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import AutomationResource, NotifierResource, StorageResource
from rlhf_assets.defs.sensors.instance_reads import latest_metadata, new_materializations
from rlhf_assets.storage import Storage

RELIABILITY = "annotator_reliability"


def review_day(instance: dg.DagsterInstance, storage: Storage, day: str, settings) -> AnnotatorReview:
    """The day against every stored earlier day: kappas from aggregated_labels' metadata, tables from storage."""
    stored = StoredPartitions(storage, RELIABILITY, sorted({*daily_partitions.get_partition_keys(), day}))
    days = [d for d in stored if d <= day]
    tables = {d: stored[d].load() for d in days}
    kappas = {d: m.get("fleiss_kappa") for d, m in latest_metadata(instance, "aggregated_labels", days).items()}
    return review(day, kappas, tables, settings)


def evaluation(result: AnnotatorReview) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(RELIABILITY), check_name=ANNOTATORS_STABLE, passed=not result.alarm,
        partition=result.day, severity=dg.AssetCheckSeverity.WARN,
        description=("stable" if not result.alarm else
                     "; ".join((["Fleiss' kappa fell"] if result.kappa_alarm else [])
                               + [f"{c['annotator_id']} accuracy {c['accuracy']:.2f} (history {c['history']:.2f})"
                                  for c in result.collapsed])),
        metadata={"fleiss_kappa": result.kappa, "kappa_history_mean": result.kappa_history,
                  "history_days": result.history_days, "kappa_alarm": result.kappa_alarm,
                  "collapsed_annotators": dg.MetadataValue.json(result.collapsed)})


@dg.asset_check(asset=RELIABILITY, name=ANNOTATORS_STABLE, partitions_def=daily_partitions,
                description="The day's Fleiss' kappa is not far below the earlier days', and no annotator's estimated "
                            "accuracy collapsed against their own history (thresholds: the automation resource). "
                            "Evaluated by annotator_disagreement_sensor on every new aggregated day; runnable here.")
def annotators_stable(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                      automation: AutomationResource) -> dg.AssetCheckResult:
    e = evaluation(review_day(context.instance, storage.storage(), context.partition_key, automation.settings()))
    return dg.AssetCheckResult(passed=e.passed, severity=e.severity, description=e.description,
                               metadata=dict(e.metadata))


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="On every new aggregated day: alerts when Fleiss' kappa falls against the earlier days or an "
                       "annotator's estimated reliability collapses against their own history, naming them; flags "
                       "them (monitoring/annotators/flagged.json, the list the annotation queue's quality control also "
                       "flags to) so the next aggregation marks — or, with flagged_annotators: exclude | downweight, "
                       "leaves out or down-weights — their labels; records its review as an observation "
                       "of that day (the annotators_stable check runs in the data pillar). Every 60 s; starts "
                       "stopped.")
def annotator_disagreement_sensor(context: dg.SensorEvaluationContext, storage: StorageResource,
                                  automation: AutomationResource, notifier: NotifierResource) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    records = new_materializations(context.instance, RELIABILITY, cursor.get("storage_id"))
    store, settings, alerts = storage.storage(), automation.settings(), notifier.notifier(context.log)
    events = []
    for record in records:
        day = record.partition_key
        if day is None:
            continue
        result = review_day(context.instance, store, day, settings)
        # the data-pillar run evaluated the annotators_stable check already (Dagster keeps one runless evaluation per
        # check and partition at most): the sensor records what it reviewed as an observation of that day
        events.append(dg.AssetObservation(asset_key=RELIABILITY, partition=day, metadata={
            "review": "annotator disagreement", **{k: v for k, v in evaluation(result).metadata.items()},
            "alarm": result.alarm}))
        if result.alarm:
            if result.collapsed:
                flag(store, result)
            alerts.alert("annotator_disagreement_sensor",
                         f"annotator disagreement on {day}: "
                         + ("Fleiss' kappa fell; " if result.kappa_alarm else "")
                         + ", ".join(c["annotator_id"] for c in result.collapsed), result.to_dict())
    if records:
        cursor["storage_id"] = records[-1].storage_id
    return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor),
                           skip_reason=None if records else "no new aggregated day")
