"""The expectation suite checks the annotation app's fields: item_kind, expected_label, orientation."""

import polars as pl

from rlhf_assets.preference.ingest import read_comparison_file
from rlhf_assets.preference.validation import ValidationRules, validate
from rlhf_assets_tests.records import DAY, jsonl, rec


def test_app_fields_are_checked():
    good = [rec(0, item_kind="pair", orientation="swapped"), rec(1, item_kind="gold", expected_label="b"),
            rec(2, item_kind="attention", expected_label="a", orientation="as_queued"), rec(3)]
    bad = {"kind": rec(10, item_kind="golden"), "expected": rec(11, item_kind="gold", expected_label="left"),
           "orientation": rec(12, orientation="flipped"), "qc_without_answer": rec(13, item_kind="attention")}
    records, _ = read_comparison_file(f"landing/comparisons/date={DAY}/app.jsonl", jsonl(*good, *bad.values()))
    result = validate(records, ValidationRules(day=DAY))
    assert sorted(result.valid["comparison_id"]) == ["c0", "c1", "c2", "c3"]
    failed = {r["comparison_id"]: " ".join(r["failed_expectations"]) for r in result.quarantined.iter_rows(named=True)}
    assert "item_kind" in failed["c10"] and "expected_label" in failed["c11"]
    assert "orientation" in failed["c12"] and "expect_column_values_to_not_be_null(expected_label)" in failed["c13"]
    assert isinstance(result.valid, pl.DataFrame)
