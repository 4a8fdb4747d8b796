"""Annotator quality from quality-control answers, and the rule that flags an annotator.

A gold answer is right when its label equals the record's ``expected_label`` (both in the orientation shown, so the
app's random left/right swap cancels out); an attention check is failed when it does not. An annotator is flagged
when, over the window (AnnotationSettings.quality_window_days):

* their gold accuracy is below ``gold_accuracy_threshold`` with at least ``min_gold_answers`` gold answers, or
* they failed at least ``attention_failures_to_flag`` attention checks (one slip does not flag).

Flags go to the same list the disagreement sensor keeps (automation/annotators.py, monitoring/annotators/
flagged.json) with their reason, and aggregation keeps, down-weights or excludes them from there
(preference/labels.py, AggregationSettings.flagged_annotators).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from rlhf_assets.annotation.queue import QC_KINDS

QUALITY_SCHEMA: dict[str, pl.DataType] = {
    "annotator_id": pl.String(), "gold_n": pl.Int64(), "gold_correct": pl.Int64(), "gold_accuracy": pl.Float64(),
    "attention_n": pl.Int64(), "attention_failures": pl.Int64(),
}
FLAG_SOURCE = "quality_control"


def qc_rows(comparisons: pl.DataFrame) -> pl.Series:
    """Which rows are quality-control answers (item_kind gold or attention); all False without the column."""
    if "item_kind" not in comparisons.columns:
        return pl.Series("qc", [False] * comparisons.height, dtype=pl.Boolean)
    return comparisons["item_kind"].is_in(QC_KINDS).fill_null(False).alias("qc")


def qc_stats(comparisons: pl.DataFrame) -> pl.DataFrame:
    """One row per annotator with quality-control answers among ``comparisons`` (QUALITY_SCHEMA); a QC answer
    without an expected_label is not counted (validation quarantines those)."""
    if comparisons.height == 0 or "item_kind" not in comparisons.columns or "expected_label" not in comparisons.columns:
        return pl.DataFrame(schema=QUALITY_SCHEMA)
    rows = comparisons.filter(qc_rows(comparisons) & pl.col("expected_label").is_not_null())
    right = pl.col("label") == pl.col("expected_label")
    gold, attention = pl.col("item_kind") == "gold", pl.col("item_kind") == "attention"
    return (rows.group_by("annotator_id")
            .agg(gold.sum().alias("gold_n"), (gold & right).sum().alias("gold_correct"),
                 attention.sum().alias("attention_n"), (attention & ~right).sum().alias("attention_failures"))
            .with_columns(pl.when(pl.col("gold_n") > 0).then(pl.col("gold_correct") / pl.col("gold_n"))
                          .otherwise(None).alias("gold_accuracy"))
            .select(list(QUALITY_SCHEMA)).cast(QUALITY_SCHEMA).sort("annotator_id"))


def flag_reason(gold_n: int, gold_accuracy: float | None, attention_failures: int, *, gold_accuracy_threshold: float,
                min_gold_answers: int, attention_failures_to_flag: int) -> str | None:
    """Why an annotator with these quality-control figures is flagged, or None when they are not."""
    reasons = []
    if gold_n >= min_gold_answers and gold_accuracy is not None and gold_accuracy < gold_accuracy_threshold:
        reasons.append(f"gold accuracy {gold_accuracy:.2f} on {gold_n} gold items, below {gold_accuracy_threshold:.2f}")
    if attention_failures >= attention_failures_to_flag:
        reasons.append(f"failed {attention_failures} attention checks (flagged at {attention_failures_to_flag})")
    return "; ".join(reasons) or None


def review_quality(comparisons: pl.DataFrame, settings: Any) -> pl.DataFrame:
    """:func:`qc_stats` with ``flagged`` and ``flag_reason`` by :func:`flag_reason` under ``settings`` (an
    AnnotationSettings)."""
    stats = qc_stats(comparisons)
    reasons = [flag_reason(r["gold_n"], r["gold_accuracy"], r["attention_failures"],
                           gold_accuracy_threshold=settings.gold_accuracy_threshold,
                           min_gold_answers=settings.min_gold_answers,
                           attention_failures_to_flag=settings.attention_failures_to_flag)
               for r in stats.iter_rows(named=True)]
    return stats.with_columns(pl.Series("flag_reason", reasons, dtype=pl.String),
                              pl.Series("flagged", [r is not None for r in reasons], dtype=pl.Boolean))


def flags_from(review: pl.DataFrame, day: str, window: tuple[str, str]) -> dict[str, dict[str, Any]]:
    """The flagged rows of :func:`review_quality` as entries of the flagged list (automation/annotators.py)."""
    return {r["annotator_id"]: {"reason": f"quality control: {r['flag_reason']}", "day": day, "source": FLAG_SOURCE,
                                "gold_n": r["gold_n"], "gold_accuracy": r["gold_accuracy"],
                                "attention_failures": r["attention_failures"], "window": list(window)}
            for r in review.filter(pl.col("flagged")).iter_rows(named=True)}
