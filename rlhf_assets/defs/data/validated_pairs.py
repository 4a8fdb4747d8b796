import dagster as dg
import polars as pl

from rlhf_assets.defs.check_names import QUARANTINE_RATE, ROWS_CONSERVED
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, mapping_table, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.landing import conservation, count_landing
from rlhf_assets.preference.validation import ValidationRules, validate

ValidationConfig = config_class("ValidationConfig", ValidationRules, exclude=("day",))


@dg.asset(
    partitions_def=daily_partitions,
    group_name="data",
    kinds={"polars", "great_expectations"},
    owners=OWNERS,
    check_specs=[
        dg.AssetCheckSpec(QUARANTINE_RATE, asset="validated_pairs", blocking=True, partitions_def=daily_partitions,
                          description="Share of quarantined rows is at most config.max_quarantine_rate."),
        dg.AssetCheckSpec(ROWS_CONSERVED, asset="validated_pairs", blocking=True, partitions_def=daily_partitions,
                          description="Every row counted in the day's landing files (non-blank lines, Parquet "
                                      "num_rows; read apart from ingest) is exactly one valid or quarantined row, "
                                      "or lies in a file quarantined whole; per file and in total."),
    ],
)
def validated_pairs(
    context: dg.AssetExecutionContext, config: ValidationConfig, storage: StorageResource, raw_comparisons: pl.DataFrame
):
    """Comparisons that passed the Great Expectations suite; the rest go to quarantine/date=…/rows.parquet with
    every expectation each row failed."""
    day = context.partition_key
    rules = settings_from(config, ValidationRules, day=day)
    result = validate(raw_comparisons, rules)
    store = storage.storage()
    landing = count_landing(store, day)
    quarantine_path = store.quarantine_dir(day).joinpath("rows.parquet")
    store.write_parquet(quarantine_path, result.quarantined)
    summary = result.summary()
    expectations = table([{"expectation": e["expectation"], "success": e["success"], "rows failing": e["unexpected"]}
                          for e in result.expectations], ["success", "rows failing", "expectation"])
    yield dg.Output(
        result.valid.drop("raw", "ingest_error"),
        metadata=display({
            "rows_in": summary["rows_in"],
            "rows_valid": summary["rows_valid"],
            "rows_quarantined": summary["rows_quarantined"],
            "quarantine_rate": summary["quarantine_rate"],
            "max_quarantine_rate": rules.max_quarantine_rate,
            "failures": mapping_table(summary["failures"], "failed expectation", "rows") if summary["failures"]
            else "none",
            "great_expectations": expectations,
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
        }),
    )
    yield dg.AssetCheckResult(
        check_name=QUARANTINE_RATE,
        passed=result.quarantine_rate <= rules.max_quarantine_rate,
        metadata=display({"rate": summary["quarantine_rate"], "threshold": rules.max_quarantine_rate,
                          "rows_quarantined": summary["rows_quarantined"], "rows_in": summary["rows_in"]}),
    )
    balance = conservation(landing, result.valid, result.quarantined)  # counted from the landing files
    yield dg.AssetCheckResult(
        check_name=ROWS_CONSERVED,
        passed=balance.pop("conserved"),
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in balance.items()}
        | {"rows_ingested": raw_comparisons.height},
    )
