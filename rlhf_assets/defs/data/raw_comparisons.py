import dagster as dg

from rlhf_assets.defs.check_names import ALL_FILES_READABLE
from rlhf_assets.defs.metadata import display, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.landing import ingest_landing
from rlhf_assets.preference.schema import SCHEMA_VERSION


@dg.asset(
    partitions_def=daily_partitions,
    group_name="data",
    kinds={"polars"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec(ALL_FILES_READABLE, asset="raw_comparisons", partitions_def=daily_partitions,
                                   description="Every file that landed for the day could be read (a warning: the "
                                               "unreadable ones are quarantined whole, with their reason).")],
)
def raw_comparisons(context: dg.AssetExecutionContext, storage: StorageResource):
    """Every comparison file that landed for the annotation date (JSONL, JSONL.gz, Parquet), normalised to the
    record schema. Unreadable files are moved to quarantine with their reason and their row count (counted from
    the bytes, for validated_pairs' rows_conserved check); bad rows are kept for validation."""
    day = context.partition_key
    batch = ingest_landing(storage.storage(), day)
    files = table([{"file": f.path, "status": f.status, "rows": f.rows, "rows counted": f.landing_rows,
                    "error": f.error or f.landing_rows_error or "", "sha256": f.sha256} for f in batch.files],
                  ["file", "status", "rows", "rows counted", "error", "sha256"])
    context.log.info(f"{day}: {len(batch.files)} files, {batch.records.height} rows, {len(batch.unreadable)} unreadable")
    yield dg.Output(
        batch.records,
        metadata={
            "files": len(batch.files),
            "files_unreadable": len(batch.unreadable),
            "rows": batch.records.height,
            "rows_with_ingest_errors": int(batch.records["ingest_error"].is_not_null().sum()),
            "schema_version": SCHEMA_VERSION,
            "file_report": files,  # with each file's full sha256
        },
    )
    yield dg.AssetCheckResult(
        check_name=ALL_FILES_READABLE,
        passed=not batch.unreadable,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(batch.unreadable)} of {len(batch.files)} file(s) unreadable, quarantined whole"
        if batch.unreadable else f"all {len(batch.files)} file(s) read",
        metadata=display({"unreadable": [f.as_dict() for f in batch.unreadable]}),
    )
