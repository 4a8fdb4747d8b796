"""validate(): the expectation suite splits a batch into valid and quarantined rows, losing none."""

from __future__ import annotations

import os

import polars as pl
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from rlhf_assets.preference.ingest import read_comparison_file  # noqa: E402
from rlhf_assets.preference.schema import RECORD_SCHEMA  # noqa: E402
from rlhf_assets.preference.validation import ValidationResult, ValidationRules, validate  # noqa: E402
from rlhf_assets_tests.records import BAD, DAY, line, rec

RULES = ValidationRules(day=DAY, max_prompt_chars=200, max_response_chars=100)


def read(lines: list[bytes]) -> pl.DataFrame:
    frame, report = read_comparison_file("batch.jsonl", b"\n".join(lines) + b"\n")
    assert report.status == "ok", report.error
    return frame


def test_clean_batch_is_all_valid():
    rows = [rec(i) for i in range(20)]
    # Edges that are still valid: the first second of the day, an offset that lands inside it, no offset
    # (read as UTC), an empty prompt, a tie, optional fields absent.
    rows += [
        rec(20, created_at=f"{DAY}T00:00:00Z"),
        rec(21, created_at="2025-05-31T23:30:00-02:00"),
        rec(22, created_at=f"{DAY}T23:59:59.999"),
        rec(23, prompt=""),
        rec(24, label="tie", confidence=..., annotation_ms=..., temperature=...),
        rec(25, response_a="r" * 100, prompt="p" * 200),
    ]
    result = validate(read([line(r) for r in rows]), RULES)
    assert result.rows_in == result.rows_valid == len(rows)
    assert result.rows_quarantined == 0
    assert result.failures == {}
    assert result.quarantine_rate == 0.0
    assert result.valid["comparison_id"].to_list() == [r["comparison_id"] for r in rows]
    assert "failed_expectations" in result.quarantined.columns
    assert all(e["success"] for e in result.expectations)
    assert result.valid.columns == list(RECORD_SCHEMA)


def test_mixed_batch_quarantines_each_bad_row_with_its_reason():
    clean = [rec(i) for i in range(12)]
    clean.append(rec(140, annotator_id="someone-else", prompt="P", response_a="Y", response_b="X"))  # 2nd opinion
    lines = [line(r) for r in clean[:4]]
    for bad_line, _ in BAD.values():
        lines.append(bad_line)
    # Two copies of one id: the expectation cannot tell which copy is "the" original, so both are quarantined.
    lines += [line(rec(200, comparison_id="dup-id")), line(rec(201, comparison_id="dup-id"))]
    lines += [b"", b"   "]  # blank lines are not rows
    lines += [line(r) for r in clean[4:]]
    non_blank = sum(1 for x in lines if x.strip())
    assert len(BAD) >= 15

    result = validate(read(lines), RULES)

    # Conservation.
    assert result.rows_in == non_blank == len(clean) + len(BAD) + 2
    assert result.rows_in == result.rows_valid + result.rows_quarantined
    assert result.rows_valid == len(clean)
    assert result.rows_quarantined == len(BAD) + 2
    assert result.quarantine_rate == pytest.approx((len(BAD) + 2) / non_blank)

    # Every clean row is valid, in input order, and none is quarantined.
    assert result.valid["comparison_id"].to_list() == [r["comparison_id"] for r in clean]
    assert result.valid["ingest_error"].null_count() == result.rows_valid

    # Each bad row is quarantined with the expected reason; the quarantine keeps input order and source lines.
    quarantined = result.quarantined
    assert quarantined["source_line"].to_list() == sorted(quarantined["source_line"].to_list())
    by_line = {r["source_line"]: r for r in quarantined.iter_rows(named=True)}
    first_bad_line = 5
    for offset, (name, (_, expected)) in enumerate(BAD.items()):
        row = by_line.get(first_bad_line + offset)
        assert row is not None, f"{name} was not quarantined"
        failed = row["failed_expectations"]
        for needle in expected:
            assert any(needle in f for f in failed), f"{name}: {needle!r} not in {failed}"
        if name in ("malformed JSON line", "invalid UTF-8 line", "JSON array line"):
            assert row["raw"] and row["ingest_error"]

    # The documented duplicate-id behaviour: both copies fail, and only on that expectation.
    dups = quarantined.filter(pl.col("comparison_id") == "dup-id")
    assert dups.height == 2
    assert dups["failed_expectations"].to_list() == [["expect_column_values_to_be_unique(comparison_id)"]] * 2

    # failures counts match the quarantined rows per expectation.
    counted: dict[str, int] = {}
    for failed in quarantined["failed_expectations"].to_list():
        assert failed and len(failed) == len(set(failed))
        for name in failed:
            counted[name] = counted.get(name, 0) + 1
    assert counted == result.failures
    assert result.failures["expect_column_values_to_be_unique(comparison_id)"] == 2
    # Both judgements of a repeated (annotator, pair) fail; another annotator on that pair (c140) is fine.
    assert result.failures["expect_compound_columns_to_be_unique(annotator_id,pair_id)"] == 4
    assert result.failures["expect_column_values_to_be_in_set(label)"] == 2
    assert result.failures["expect_column_values_to_be_between(created_at_epoch)"] == 2
    summaries = {e["expectation"]: e for e in result.expectations}
    for name, count in result.failures.items():
        assert summaries[name]["unexpected"] == count and not summaries[name]["success"]

    summary = result.summary()
    assert summary["rows_in"] == non_blank and summary["failures"] == dict(sorted(result.failures.items()))


def test_without_a_day_only_parseability_of_created_at_is_checked():
    rows = [
        line(rec(0, created_at="2019-01-01T00:00:00Z")),
        line(rec(1, created_at="2030-12-31T23:59:59+05:00")),
        line(rec(2, created_at="not a time")),
        line(rec(3, created_at="")),
    ]
    result = validate(read(rows))
    assert result.valid["comparison_id"].to_list() == ["c0", "c1"]
    assert result.quarantined["comparison_id"].to_list() == ["c2", "c3"]
    assert result.failures == {"expect_column_values_to_not_be_null(created_at_epoch)": 2}
    # The same rows with a day: the other-day timestamps are rejected too.
    with_day = validate(read(rows), ValidationRules(day=DAY))
    assert with_day.rows_valid == 0 and with_day.rows_quarantined == 4
    assert with_day.failures["expect_column_values_to_be_between(created_at_epoch)"] == 2


def test_thresholds_come_from_the_rules():
    rows = [line(rec(0, response_a="r" * 50, annotation_ms=5000))]
    assert validate(read(rows), ValidationRules()).rows_valid == 1
    strict = validate(read(rows), ValidationRules(max_response_chars=49, max_annotation_ms=4999))
    assert strict.rows_quarantined == 1
    assert sorted(strict.quarantined["failed_expectations"][0]) == [
        "expect_column_value_lengths_to_be_between(response_a)",
        "expect_column_values_to_be_between(annotation_ms)",
    ]


def test_empty_input_gives_an_empty_result():
    result = validate(pl.DataFrame(schema=RECORD_SCHEMA), RULES)
    assert isinstance(result, ValidationResult)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (0, 0, 0)
    assert result.failures == {}
    assert result.quarantine_rate == 0.0
    assert result.valid.columns == list(RECORD_SCHEMA)
    assert result.quarantined.columns == [*RECORD_SCHEMA, "failed_expectations"]
    assert result.summary() == {"rows_in": 0, "rows_valid": 0, "rows_quarantined": 0, "quarantine_rate": 0.0,
                                "failures": {}}


def test_quarantine_rate():
    rows = [line(rec(i)) for i in range(3)] + [line(rec(9, label="nope"))]
    result = validate(read(rows), RULES)
    assert result.rows_in == 4 and result.rows_quarantined == 1
    assert result.quarantine_rate == 0.25
    assert result.summary()["quarantine_rate"] == 0.25
    all_bad = validate(read([line(rec(0, label="x"))]), RULES)
    assert all_bad.quarantine_rate == 1.0


def test_extra_columns_are_dropped_and_column_order_does_not_matter():
    frame = read([line(rec(0)), line(rec(1))])
    shuffled = frame.select(list(reversed(frame.columns))).with_columns(pl.lit(1).alias("extra"))
    result = validate(shuffled, RULES)
    assert result.rows_valid == 2 and result.valid.columns == list(RECORD_SCHEMA)
