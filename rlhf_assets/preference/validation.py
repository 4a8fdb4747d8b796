"""The comparison expectation suite (Great Expectations 1.x, run directly on an ephemeral context).

``validate(records, rules)`` splits a batch into valid rows and quarantined rows; each quarantined row lists
every expectation it failed. ``rows_in`` is the height of the batch it was given, not the sum of the two parts;
whether every row of the landing zone came out as exactly one of them is the ``rows_conserved`` check of
``validated_pairs``, which counts the landing files themselves (``landing.count_landing``).

A few expectations need a derived column that GE can check row by row (GE has no "two columns differ" or
"timestamp parses" expectation that works on every backend): ``created_at_epoch`` is the parsed timestamp in
seconds (null when unparseable). The derived columns never leave this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

import polars as pl
from pydantic import Field

from rlhf_assets.annotation.queue import ITEM_KINDS, QC_KINDS
from rlhf_assets.config_schema import settings
from rlhf_assets.preference.schema import LABELS, ORIENTATIONS, RECORD_SCHEMA, REQUIRED_FIELDS

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

ROW = "_row"
EPOCH = "created_at_epoch"


@settings
class ValidationRules:
    """Thresholds of the suite and of the day's quarantine check; every one but ``day`` is a config field of the
    ``validated_pairs`` asset."""

    day: str | None = None
    """Partition day "YYYY-MM-DD" created_at must fall in (set by the asset); None: created_at must only parse."""
    max_prompt_chars: Annotated[int, Field(ge=1)] = 60_000
    """Longest prompt accepted, in characters."""
    max_response_chars: Annotated[int, Field(ge=1)] = 20_000
    """Longest response accepted, in characters."""
    min_response_chars: Annotated[int, Field(ge=0)] = 1
    """Shortest response accepted, in characters."""
    max_annotation_ms: Annotated[int, Field(ge=1)] = 24 * 3600 * 1000
    """Longest plausible annotation time (annotation_ms), in milliseconds."""
    max_quarantine_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Blocking: the partition fails (and nothing downstream runs) when a larger share of its rows is quarantined."""


@dataclass
class ValidationResult:
    valid: pl.DataFrame
    quarantined: pl.DataFrame  # the record columns + failed_expectations (list[str])
    failures: dict[str, int]  # expectation -> rows failing it
    rows_in: int  # rows handed to validate()
    expectations: list[dict[str, Any]] = field(default_factory=list)  # one summary per GE result

    @property
    def rows_valid(self) -> int:
        return self.valid.height

    @property
    def rows_quarantined(self) -> int:
        return self.quarantined.height

    @property
    def quarantine_rate(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_valid": self.rows_valid,
            "rows_quarantined": self.rows_quarantined,
            "quarantine_rate": round(self.quarantine_rate, 6),
            "failures": dict(sorted(self.failures.items())),
        }


def expectation_name(config: Any) -> str:
    kwargs = config.kwargs
    target = kwargs.get("column") or ",".join(kwargs.get("column_list", []))
    return f"{config.type}({target})"


def build_suite(rules: ValidationRules) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    suite: list[Any] = [e.ExpectColumnValuesToBeNull(column="ingest_error")]  # parse and type errors
    suite += [e.ExpectColumnValuesToNotBeNull(column=name) for name in REQUIRED_FIELDS]
    suite += [
        e.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS)),
        e.ExpectColumnValuesToMatchRegex(column="annotator_id", regex=r"\S"),
        e.ExpectColumnValuesToMatchRegex(column="comparison_id", regex=r"\S"),
        e.ExpectSelectColumnValuesToBeUniqueWithinRecord(column_list=["response_a", "response_b"]),
        e.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=0, max_value=rules.max_prompt_chars),
        e.ExpectColumnValuesToBeUnique(column="comparison_id"),
        e.ExpectCompoundColumnsToBeUnique(column_list=["annotator_id", "pair_id"]),
        e.ExpectColumnValuesToNotBeNull(column=EPOCH, row_condition="created_at.notnull()", condition_parser="pandas"),
        e.ExpectColumnValuesToBeBetween(column="confidence", min_value=1, max_value=5),
        e.ExpectColumnValuesToBeBetween(column="annotation_ms", min_value=0, max_value=rules.max_annotation_ms),
        e.ExpectColumnValuesToBeBetween(column="temperature", min_value=0, max_value=10),
        # the annotation app's fields (optional: null passes)
        e.ExpectColumnValuesToBeInSet(column="item_kind", value_set=list(ITEM_KINDS)),
        e.ExpectColumnValuesToBeInSet(column="expected_label", value_set=list(LABELS)),
        e.ExpectColumnValuesToBeInSet(column="orientation", value_set=list(ORIENTATIONS)),
        # a gold / attention answer without its expected answer measures nothing
        e.ExpectColumnValuesToNotBeNull(column="expected_label", row_condition=f"item_kind in {list(QC_KINDS)!r}",
                                        condition_parser="pandas"),
    ]
    suite += [
        e.ExpectColumnValueLengthsToBeBetween(
            column=name, min_value=rules.min_response_chars, max_value=rules.max_response_chars
        )
        for name in ("response_a", "response_b")
    ]
    if rules.day is not None:
        start = datetime.combine(date.fromisoformat(rules.day), datetime.min.time(), tzinfo=UTC)
        suite.append(
            e.ExpectColumnValuesToBeBetween(
                column=EPOCH,
                min_value=start.timestamp(),
                max_value=(start + timedelta(days=1)).timestamp(),
                strict_max=True,
            )
        )
    return suite


def parse_timestamp(value: str | None) -> float | None:
    """Seconds since the epoch for an ISO-8601 string ("Z" or an offset; no offset is read as UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@lru_cache(maxsize=1)
def _batch_definition():
    """One ephemeral GE context per process: creating data sources is the slow part, validating is cheap."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("comparisons")
    return context, source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")


def validate(records: pl.DataFrame, rules: ValidationRules | None = None) -> ValidationResult:
    """Run the suite over a batch of records (the ingest schema) and split it into valid and quarantined."""
    import great_expectations as gx

    rules = rules or ValidationRules()
    records = records.select(list(RECORD_SCHEMA))
    if records.height == 0:
        empty = records.with_columns(pl.lit(None, pl.List(pl.String)).alias("failed_expectations"))
        return ValidationResult(valid=records, quarantined=empty, failures={}, rows_in=0)

    checked = records.with_row_index(ROW).with_columns(
        pl.col("created_at").map_elements(parse_timestamp, return_dtype=pl.Float64).alias(EPOCH)
    )
    context, batch_definition = _batch_definition()
    suite = gx.ExpectationSuite(name=f"comparisons-{rules.day or 'any'}", expectations=build_suite(rules))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": checked.drop("raw").to_pandas()})
    outcome = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]})

    failed_by_row: dict[int, list[str]] = {}
    failures: dict[str, int] = {}
    summaries = []
    for result in outcome.results:
        name = expectation_name(result.expectation_config)
        if result.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {name} could not run: {result.exception_info.get('exception_message')}")
        rows = [int(hit[ROW]) for hit in result.result.get("unexpected_index_list") or []]
        summaries.append({"expectation": name, "success": bool(result.success), "unexpected": len(rows)})
        if rows:
            failures[name] = len(rows)
        for row in rows:
            failed_by_row.setdefault(row, []).append(name)

    bad = pl.DataFrame(
        {ROW: list(failed_by_row), "failed_expectations": list(failed_by_row.values())},
        schema={ROW: pl.UInt32, "failed_expectations": pl.List(pl.String)},
    )
    indexed = records.with_row_index(ROW)
    quarantined = indexed.join(bad, on=ROW, how="inner").sort(ROW).drop(ROW)
    valid = indexed.join(bad, on=ROW, how="anti").drop(ROW)
    return ValidationResult(valid=valid, quarantined=quarantined, failures=failures, rows_in=records.height,
                            expectations=summaries)
