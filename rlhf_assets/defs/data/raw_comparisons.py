import dagster as dg

from rlhf_assets.defs.check_names import ALL_FILES_READABLE
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.landing import ingest_landing
from rlhf_assets.preference.schema import SCHEMA_VERSION


@dg.asset(
    partitions_def=daily_partitions,
    group_name="data",
    kinds={"polars"},
    check_specs=[dg.AssetCheckSpec(ALL_FILES_READABLE, asset="raw_comparisons", partitions_def=daily_partitions)],
)
def raw_comparisons(context: dg.AssetExecutionContext, storage: StorageResource):
    """Every comparison file that landed for the annotation date (JSONL, JSONL.gz, Parquet), normalised to the
    record schema. Unreadable files are moved to quarantine with their reason and their row count (counted from
    the bytes, for validated_pairs' rows_conserved check); bad rows are kept for validation."""
    day = context.partition_key
    batch = ingest_landing(storage.storage(), day)
    files_md = "| file | status | rows | rows counted | sha256 | error |\n|---|---|---|---|---|---|\n" + "".join(
        f"| {f.path} | {f.status} | {f.rows} | {f.landing_rows} | `{f.sha256[:16]}` "
        f"| {f.error or f.landing_rows_error or ''} |\n" for f in batch.files
    )
    context.log.info(f"{day}: {len(batch.files)} files, {batch.records.height} rows, {len(batch.unreadable)} unreadable")
    yield dg.Output(
        batch.records,
        metadata={
            "files": len(batch.files),
            "files_unreadable": len(batch.unreadable),
            "rows": batch.records.height,
            "rows_with_ingest_errors": int(batch.records["ingest_error"].is_not_null().sum()),
            "schema_version": SCHEMA_VERSION,
            "file_report": dg.MetadataValue.md(files_md),
            "file_sha256": dg.MetadataValue.json({f.path: f.sha256 for f in batch.files}),
        },
    )
    yield dg.AssetCheckResult(
        check_name=ALL_FILES_READABLE,
        passed=not batch.unreadable,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unreadable": dg.MetadataValue.json([f.as_dict() for f in batch.unreadable])},
    )
