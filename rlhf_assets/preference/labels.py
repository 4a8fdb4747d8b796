"""From validated comparisons to one label per pair, an annotator table and agreement statistics.

Labels are oriented canonically first (schema.is_canonical_order): a judgement of the pair shown as (B, A)
is flipped, so "a" always means "the canonical first response wins". Position bias is measured in the order
each annotator actually saw.

Quality-control answers (``item_kind`` gold / attention, annotation/queue.py QC_KINDS) never become labels: they are
taken out first and only fill the annotator table's gold_n, gold_accuracy and attention_failures. Annotators on
the flagged list (automation/annotators.py: the disagreement sensor's and the queue's quality-control flags) are
kept, excluded or down-weighted (``flagged_annotators``); the table says which, with the reason and the weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from rlhf_assets.annotation.quality import qc_rows, qc_stats
from rlhf_assets.config_schema import settings
from rlhf_assets.preference.aggregation import AggregationResult, dawid_skene, majority_vote
from rlhf_assets.preference.agreement import (
    annotator_disagreement,
    cohen_kappa_pairs,
    fleiss_kappa_items,
    kappa_against_consensus,
)
from rlhf_assets.preference.schema import LABELS

Method = Literal["dawid-skene", "majority"]
_FLIP = {"a": "b", "b": "a", "tie": "tie"}


@settings
class AggregationSettings:
    """How one label per pair is aggregated from every annotator's judgement."""

    method: Method = "dawid-skene"
    """dawid-skene: EM over per-annotator confusion matrices | majority: majority vote."""
    shrinkage: Annotated[float, Field(ge=0)] = 2.0
    """Pseudo-counts pulling each annotator's confusion matrix toward the pooled one (0 = plain Dawid–Skene)."""
    max_iter: Annotated[int, Field(ge=1)] = 300
    """EM iterations at most (EM crawls when a class, ties, is rare; 100 was not always enough on the demo data)."""
    tol: Annotated[float, Field(gt=0)] = 1e-5
    """EM stops when the log-likelihood improves by less than this."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of majority-vote tie-breaking."""
    min_overlap: Annotated[int, Field(ge=1)] = 20
    """Items two annotators must share before their Cohen's kappa is reported."""
    out_of_core_bytes: Annotated[int, Field(ge=0)] = 256 << 20
    """`rlhf aggregate`: Parquet input larger than this (bytes on disk) is aggregated out of core — bucketed on disk
    by item, one sequential pass per EM iteration, memory bounded by batch_rows instead of growing with the rows."""
    batch_rows: Annotated[int, Field(ge=1)] = 1_000_000
    """`rlhf aggregate` out of core: rows read at a time, and about the rows of one on-disk bucket (peak memory grows
    with it)."""
    flagged_annotators: Literal["keep", "exclude", "downweight"] = "keep"
    """Annotators on the flagged list (monitoring/annotators/flagged.json: the disagreement sensor's and the
    annotation queue's quality-control flags): keep their labels (the table still marks them), exclude them from
    the aggregation (their labels are counted in the table, not used), or downweight their votes by
    flagged_weight (weighted majority vote; Dawid–Skene with each of their labels' likelihood to that power)."""
    flagged_weight: Annotated[float, Field(gt=0, le=1)] = 0.25
    """flagged_annotators: downweight — the weight of a flagged annotator's vote (1 = an unflagged vote)."""
    disputed_items: Annotated[int, Field(ge=0)] = 20
    """The most disputed pairs (share of votes against the aggregate label) listed in the aggregation's metadata."""


@dataclass
class LabelAggregation:
    labels: pl.DataFrame  # one row per pair
    annotators: pl.DataFrame  # one row per annotator
    agreement: pl.DataFrame  # Cohen's kappa per annotator pair with enough overlap
    stats: dict[str, Any] = field(default_factory=dict)


LABEL_SCHEMA = {
    "pair_id": pl.String, "prompt": pl.String, "response_a": pl.String, "response_b": pl.String,
    "label": pl.String, "confidence": pl.Float64, "p_a": pl.Float64, "p_b": pl.Float64, "p_tie": pl.Float64,
    "n_votes": pl.Int64, "share_a": pl.Float64, "mean_annotator_accuracy": pl.Float64, "chosen": pl.String,
    "rejected": pl.String,
}
ANNOTATOR_SCHEMA = {
    "annotator_id": pl.String, "n_labels": pl.Int64, "accuracy": pl.Float64, "first_position_rate": pl.Float64,
    "tie_rate": pl.Float64, "disagreement_rate": pl.Float64, "kappa": pl.Float64, "confusion": pl.String,
    "gold_n": pl.Int64, "gold_accuracy": pl.Float64, "attention_failures": pl.Int64,
    "flagged": pl.Boolean, "flag_reason": pl.String, "excluded": pl.Boolean, "weight": pl.Float64,
}
# n_labels counts pair labels only; kappa: Cohen's kappa against the aggregate label; gold_n / gold_accuracy /
# attention_failures: the day's quality-control answers; weight: of the annotator's votes (0 when excluded)
_QUALITY_COLUMNS = ("gold_n", "gold_accuracy", "attention_failures")
_MARKS = ("flagged", "flag_reason", "excluded", "weight")
AGREEMENT_SCHEMA = {"annotator_1": pl.String, "annotator_2": pl.String, "n_overlap": pl.Int64, "kappa": pl.Float64}


def orient(comparisons: pl.DataFrame) -> pl.DataFrame:
    """Add canonical columns: first/second response and the label relative to them."""
    canonical = pl.col("response_a") <= pl.col("response_b")
    return comparisons.with_columns(
        pl.when(canonical).then(pl.col("response_a")).otherwise(pl.col("response_b")).alias("first"),
        pl.when(canonical).then(pl.col("response_b")).otherwise(pl.col("response_a")).alias("second"),
        pl.when(canonical).then(pl.col("label")).otherwise(pl.col("label").replace_strict(_FLIP)).alias("oriented"),
    )


def aggregate_comparisons(comparisons: pl.DataFrame, settings: AggregationSettings | None = None,
                          flagged: dict[str, dict] | None = None) -> LabelAggregation:
    """One label per pair. Quality-control answers are left out of the labels and fill the table's gold and
    attention columns. ``flagged`` (annotator id → {"reason", ...}) marks annotators in the table; with
    ``flagged_annotators="exclude"`` their labels are left out and they appear as excluded rows, with
    ``"downweight"`` their votes count ``flagged_weight``."""
    settings = settings or AggregationSettings()
    flagged = flagged or {}
    qc = qc_rows(comparisons)
    quality = qc_stats(comparisons.filter(qc))
    comparisons = comparisons.filter(~qc)  # gold and attention items must never become training data
    excluded = pl.DataFrame(schema={"annotator_id": pl.String, "n_labels": pl.UInt32})
    weights: dict[str, float] = {}
    if settings.flagged_annotators == "exclude" and flagged and comparisons.height:
        out = comparisons["annotator_id"].is_in(list(flagged))
        excluded = comparisons.filter(out).group_by("annotator_id").len("n_labels")
        comparisons = comparisons.filter(~out)
    elif settings.flagged_annotators == "downweight" and flagged and comparisons.height:
        present = set(comparisons["annotator_id"].unique().to_list())
        weights = {a: settings.flagged_weight for a in flagged if a in present}
    result = _aggregate(comparisons, settings, weights)
    result.annotators = _mark_flagged(result.annotators, flagged, excluded, quality, weights)
    result.stats["excluded_annotators"] = excluded["annotator_id"].to_list()
    result.stats["excluded_labels"] = int(excluded["n_labels"].sum()) if excluded.height else 0
    result.stats["downweighted_annotators"] = sorted(weights)
    result.stats["qc_answers"] = int(qc.sum())
    return result


def _mark_flagged(table: pl.DataFrame, flagged: dict[str, dict], excluded: pl.DataFrame, quality: pl.DataFrame,
                  weights: dict[str, float]) -> pl.DataFrame:
    """The annotator table with the excluded annotators' rows, the quality-control columns (annotators who only
    answered QC items get a row with n_labels 0) and who is flagged, why, and their votes' weight."""
    reasons = {k: str(v.get("reason", "flagged")) for k, v in flagged.items()}
    table = table.with_columns(pl.lit(False).alias("excluded"))
    if excluded.height:
        table = pl.concat([table, excluded.with_columns(pl.col("n_labels").cast(pl.Int64), pl.lit(True).alias(
            "excluded"))], how="diagonal_relaxed")
    table = table.join(quality.select("annotator_id", *_QUALITY_COLUMNS), on="annotator_id", how="full",
                       coalesce=True)
    return table.with_columns(
        pl.col("n_labels").fill_null(0), pl.col("gold_n").fill_null(0), pl.col("attention_failures").fill_null(0),
        pl.col("excluded").fill_null(False),
        pl.col("annotator_id").is_in(list(reasons)).alias("flagged"),
        pl.col("annotator_id").replace_strict(reasons, default=None, return_dtype=pl.String).alias("flag_reason"),
    ).with_columns(
        pl.when(pl.col("excluded")).then(0.0)
        .otherwise(pl.col("annotator_id").replace_strict(weights, default=1.0, return_dtype=pl.Float64))
        .alias("weight"),
    ).select(list(ANNOTATOR_SCHEMA)).cast(ANNOTATOR_SCHEMA).sort("annotator_id")


def _aggregate(comparisons: pl.DataFrame, settings: AggregationSettings,
               annotator_weights: dict[str, float] | None = None) -> LabelAggregation:
    if comparisons.height == 0:
        return LabelAggregation(
            pl.DataFrame(schema=LABEL_SCHEMA),
            pl.DataFrame(schema={k: v for k, v in ANNOTATOR_SCHEMA.items() if k not in _QUALITY_COLUMNS + _MARKS}),
            pl.DataFrame(schema=AGREEMENT_SCHEMA),
            {"pairs": 0, "annotators": 0, "comparisons": 0, "disputed_items": [], "mean_item_disagreement": None},
        )
    rows = orient(comparisons).sort("pair_id", "annotator_id", "comparison_id")
    weights = None
    if annotator_weights:
        weights = rows["annotator_id"].replace_strict(annotator_weights, default=1.0,
                                                      return_dtype=pl.Float64).to_numpy()
    pairs = rows.unique("pair_id", keep="first", maintain_order=True).select("pair_id", "prompt", "first", "second")
    item = rows.select(pl.col("pair_id").rank("dense") - 1)["pair_id"].to_numpy().astype(np.int64)
    annotator_ids = rows["annotator_id"].unique().sort()
    worker = rows.select(pl.col("annotator_id").rank("dense") - 1)["annotator_id"].to_numpy().astype(np.int64)
    label = rows["oriented"].replace_strict({name: i for i, name in enumerate(LABELS)}, return_dtype=pl.Int64)
    label = label.to_numpy()
    k = len(LABELS)

    result = _run(settings, item, worker, label, pairs.height, len(annotator_ids), k, weights)
    consensus = result.labels
    pairs = pairs.sort("pair_id")  # dense rank codes follow sorted pair_id
    votes = np.bincount(item, minlength=pairs.height)
    share_a = np.bincount(item, weights=(label == 0).astype(float), minlength=pairs.height) / votes
    post = result.posteriors
    names = np.array(LABELS)[consensus]
    labels = pairs.select(
        "pair_id", "prompt", pl.col("first").alias("response_a"), pl.col("second").alias("response_b"),
    ).with_columns(
        pl.Series("label", names, dtype=pl.String),
        pl.Series("confidence", post[np.arange(pairs.height), consensus]),
        pl.Series("p_a", post[:, 0]), pl.Series("p_b", post[:, 1]), pl.Series("p_tie", post[:, 2]),
        pl.Series("n_votes", votes.astype(np.int64)), pl.Series("share_a", share_a),
        pl.lit(None, pl.Float64).alias("mean_annotator_accuracy"),
    ).with_columns(
        pl.when(pl.col("label") == "a").then("response_a").when(pl.col("label") == "b").then("response_b")
        .otherwise(None).alias("chosen"),
        pl.when(pl.col("label") == "a").then("response_b").when(pl.col("label") == "b").then("response_a")
        .otherwise(None).alias("rejected"),
    ).select(list(LABEL_SCHEMA)).cast(LABEL_SCHEMA)
    annotators = _annotator_table(rows, annotator_ids, item, worker, label, consensus, result)
    accuracy = annotators["accuracy"].fill_nan(None).fill_null(0.5).to_numpy()
    labels = labels.with_columns(pl.Series("mean_annotator_accuracy", np.bincount(
        item, weights=accuracy[worker], minlength=pairs.height) / votes))
    agreement = _agreement_table(item, worker, label, annotator_ids, settings.min_overlap)
    fleiss, fleiss_items, raters = fleiss_kappa_items(item, label, k)
    item_disagreement = 1.0 - np.bincount(item, weights=(label == consensus[item]).astype(float),
                                          minlength=pairs.height) / votes
    labels_disputed = labels.select("pair_id", "prompt", "label", "confidence", "n_votes").with_columns(
        pl.Series("disagreement", item_disagreement))
    disputed = (labels_disputed.filter(pl.col("disagreement") > 0)
                .sort(["disagreement", "confidence", "pair_id"], descending=[True, False, False])
                .head(settings.disputed_items)
                .with_columns(pl.col("prompt").str.slice(0, 80), pl.col("disagreement").round(4),
                              pl.col("confidence").round(4)))
    stats = {
        "method": settings.method,
        "pairs": pairs.height,
        "annotators": len(annotator_ids),
        "comparisons": rows.height,
        "iterations": result.n_iter,
        "converged": bool(result.converged),
        "fleiss_kappa": _finite(fleiss),
        "fleiss_items": int(fleiss_items),
        "fleiss_raters_per_item": int(raters) if raters == raters else None,
        "mean_cohen_kappa": _finite(agreement["kappa"].mean()) if agreement.height else None,
        "cohen_pairs": agreement.height,
        "mean_confidence": float(np.mean(labels["confidence"].to_numpy())),
        "label_counts": {name: int((consensus == i).sum()) for i, name in enumerate(LABELS)},
        "unanimous_share": float(np.mean(item_disagreement == 0)),
        "mean_item_disagreement": float(np.mean(item_disagreement)),
        "disputed_items": disputed.to_dicts(),  # the most disputed pairs: item-level disagreement for the UI
    }
    return LabelAggregation(labels=labels, annotators=annotators, agreement=agreement, stats=stats)


def _run(settings: AggregationSettings, item, worker, label, n_items, n_workers, k, weights=None) -> AggregationResult:
    if settings.method == "majority":
        return majority_vote(item, worker, label, n_items=n_items, n_classes=k, seed=settings.seed, weights=weights)
    if settings.method == "dawid-skene":
        return dawid_skene(item, worker, label, n_items=n_items, n_workers=n_workers, n_classes=k,
                           max_iter=settings.max_iter, tol=settings.tol, shrinkage=settings.shrinkage,
                           weights=weights)
    raise ValueError(f"unknown aggregation method {settings.method!r}; use 'dawid-skene' or 'majority'")


def _annotator_table(rows, annotator_ids, item, worker, label, consensus, result) -> pl.DataFrame:
    n = len(annotator_ids)
    n_labels = np.bincount(worker, minlength=n)
    shown = rows["label"].to_numpy()
    decided = np.bincount(worker, weights=(shown != "tie").astype(float), minlength=n)
    picked_first = np.bincount(worker, weights=(shown == "a").astype(float), minlength=n)
    ties = np.bincount(worker, weights=(shown == "tie").astype(float), minlength=n)
    disagreement = annotator_disagreement(item, worker, label, consensus)
    rate = np.full(n, np.nan)
    rate[disagreement["annotator"].to_numpy()] = disagreement["disagreement_rate"].to_numpy()
    if result.confusion is not None:
        accuracy = np.einsum("k,wkk->w", result.priors, result.confusion)
        confusion = [json.dumps(np.round(c, 4).tolist()) for c in result.confusion]
    else:  # majority vote: agreement with the consensus is the only accuracy estimate there is
        accuracy, confusion = 1.0 - rate, [None] * n
    with np.errstate(invalid="ignore", divide="ignore"):
        first_rate = np.where(decided > 0, picked_first / np.maximum(decided, 1), np.nan)
    kappa = kappa_against_consensus(item, worker, label, consensus, n, len(LABELS))
    return pl.DataFrame(
        {
            "annotator_id": annotator_ids, "n_labels": n_labels.astype(np.int64), "accuracy": accuracy,
            "first_position_rate": first_rate, "tie_rate": ties / n_labels, "disagreement_rate": rate,
            "kappa": kappa, "confusion": confusion,
        },
        schema={k: v for k, v in ANNOTATOR_SCHEMA.items() if k not in _QUALITY_COLUMNS + _MARKS},
    )


def _agreement_table(item, worker, label, annotator_ids, min_overlap) -> pl.DataFrame:
    pairs = cohen_kappa_pairs(item, worker, label, min_overlap=min_overlap)
    if pairs.height == 0:
        return pl.DataFrame(schema=AGREEMENT_SCHEMA)
    ids = annotator_ids.to_numpy()
    return pl.DataFrame(
        {
            "annotator_1": ids[pairs["annotator_1"].to_numpy()], "annotator_2": ids[pairs["annotator_2"].to_numpy()],
            "n_overlap": pairs["n_overlap"], "kappa": pairs["kappa"],
        },
        schema=AGREEMENT_SCHEMA,
    )


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
