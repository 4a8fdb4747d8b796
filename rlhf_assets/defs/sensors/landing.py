import dagster as dg

from rlhf_assets.automation.landing_watch import LandingState, scan
from rlhf_assets.defs.jobs import data_pillar_job
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource

TRIGGER_TAG = "rlhf/trigger"


@dg.sensor(job=data_pillar_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED,
           description="New or changed files under landing/comparisons/date=…/ (local or S3) → a data-pillar run "
                       "for that day. The run key carries the files' checksums, so a file is processed once; the "
                       "cursor (file checksums) survives daemon restarts. Every 30 s; starts stopped.")
def landing_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    requests, state = scan(storage.storage(), LandingState.from_json(context.cursor))
    partitions = set(daily_partitions.get_partition_keys(dynamic_partitions_store=context.instance))
    runs, skipped = [], []
    for r in requests:
        if r.day not in partitions:
            skipped.append(r.day)
            continue
        runs.append(dg.RunRequest(run_key=r.run_key, partition_key=r.day,
                                  tags={TRIGGER_TAG: "landing", "rlhf/files": ",".join(r.files)[:1000]}))
    if skipped:
        context.log.warning(f"landing files for days outside the daily partitions were not requested: {skipped} "
                            "(set RLHF_PARTITIONS_START earlier, or check the folder names)")
    return dg.SensorResult(run_requests=runs, cursor=state.to_json(),
                           skip_reason=None if runs else "no new or changed landing files")
