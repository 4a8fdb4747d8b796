import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.validation import ValidationRules, validate


class ValidationConfig(dg.Config):
    max_quarantine_rate: float = 0.05
    """Blocking: the partition fails (and nothing downstream runs) when more rows than this are quarantined."""
    max_prompt_chars: int = ValidationRules.max_prompt_chars
    max_response_chars: int = ValidationRules.max_response_chars
    min_response_chars: int = ValidationRules.min_response_chars


@dg.asset(
    partitions_def=daily_partitions,
    group_name="data",
    kinds={"polars", "great_expectations"},
    io_manager_key="table_io_manager",
    check_specs=[
        dg.AssetCheckSpec("quarantine_rate", asset="validated_pairs", blocking=True,
                          description="Share of quarantined rows is at most config.max_quarantine_rate."),
        dg.AssetCheckSpec("rows_conserved", asset="validated_pairs", blocking=True,
                          description="rows_in == rows_valid + rows_quarantined."),
    ],
)
def validated_pairs(
    context: dg.AssetExecutionContext, config: ValidationConfig, storage: StorageResource, raw_comparisons: pl.DataFrame
):
    """Comparisons that passed the Great Expectations suite; the rest go to quarantine/date=…/rows.parquet with
    every expectation each row failed."""
    day = context.partition_key
    rules = ValidationRules(
        day=day,
        max_prompt_chars=config.max_prompt_chars,
        max_response_chars=config.max_response_chars,
        min_response_chars=config.min_response_chars,
    )
    result = validate(raw_comparisons, rules)
    store = storage.storage()
    quarantine_path = store.quarantine_dir(day).joinpath("rows.parquet")
    store.write_parquet(quarantine_path, result.quarantined)
    summary = result.summary()
    ge_md = "| expectation | success | rows failing |\n|---|---|---|\n" + "".join(
        f"| `{e['expectation']}` | {e['success']} | {e['unexpected']} |\n" for e in result.expectations
    )
    yield dg.Output(
        result.valid.drop("raw", "ingest_error"),
        metadata={
            "rows_in": summary["rows_in"],
            "rows_valid": summary["rows_valid"],
            "rows_quarantined": summary["rows_quarantined"],
            "quarantine_rate": summary["quarantine_rate"],
            "max_quarantine_rate": config.max_quarantine_rate,
            "failures": dg.MetadataValue.json(summary["failures"]),
            "great_expectations": dg.MetadataValue.md(ge_md),
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
        },
    )
    yield dg.AssetCheckResult(
        check_name="quarantine_rate",
        passed=result.quarantine_rate <= config.max_quarantine_rate,
        metadata={"rate": summary["quarantine_rate"], "threshold": config.max_quarantine_rate,
                  "rows_quarantined": summary["rows_quarantined"], "rows_in": summary["rows_in"]},
    )
    yield dg.AssetCheckResult(
        check_name="rows_conserved",
        passed=raw_comparisons.height == result.rows_valid + result.rows_quarantined,
        metadata={"rows_in": raw_comparisons.height, "rows_valid": result.rows_valid,
                  "rows_quarantined": result.rows_quarantined},
    )
