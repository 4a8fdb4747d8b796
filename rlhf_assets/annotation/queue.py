"""The work queue: which annotator is asked to judge which item, on which day.

This module is the contract between the producers of work (the ``annotation_queue`` and ``audit_queue`` assets,
rlhf_assets/annotation/queue_builder.py and audit.py) and its consumer (the annotation app, ``rlhf annotate``).

One row per *assignment* (an item asked of one annotator). The assignment id is also the ``comparison_id`` of the
answer, so a resubmitted answer is recognised (idempotent) and an answer can be traced to what was asked.

Storage: ``<root>/annotation/queue/date=YYYY-MM-DD/<source>.parquet``, one file per producer and day (``pairs``
from annotation_queue, ``audit`` from audit_queue), written atomically and replaced whole by a rematerialization.
Answers do not go here: they land in ``landing/comparisons/`` (kinds pair, gold, attention) or ``landing/audits/``
(kind audit) in the comparison schema (preference/schema.py).
"""

from __future__ import annotations

import polars as pl

from rlhf_assets.storage import Storage

ITEM_KINDS = ("pair", "gold", "attention", "audit")
QC_KINDS = ("gold", "attention")  # quality-control items: they measure annotators and are never training data
SOURCES = ("pairs", "audit")
QUEUE_DIR = ("annotation", "queue")

ASSIGNMENT_SCHEMA: dict[str, pl.DataType] = {
    "assignment_id": pl.String(),    # unique; the answer's comparison_id
    "day": pl.String(),              # YYYY-MM-DD: the queue day (the answer lands under the day it is given)
    "annotator_id": pl.String(),
    "item_id": pl.String(),          # the item asked of several annotators (a pair's pair_id for kind pair / audit)
    "item_kind": pl.String(),        # one of ITEM_KINDS
    "round": pl.Int64(),             # 0: first k annotators; 1, 2, …: dynamic-overlap extra rounds
    "prompt": pl.String(),
    "response_a": pl.String(),       # as queued; the app may show it swapped (the answer records its orientation)
    "response_b": pl.String(),
    "policy_a": pl.String(),
    "policy_b": pl.String(),
    "temperature": pl.Float64(),
    "batch_id": pl.String(),
    "expected_label": pl.String(),   # gold / attention: a | b | tie in the queued orientation; null otherwise
    "priority": pl.Float64(),        # higher first (audit: the stratum's allocation weight); null = queue order
}


def queue_path(storage: Storage, day: str, source: str):
    if source not in SOURCES:
        raise ValueError(f"unknown queue source {source!r}; expected one of {SOURCES}")
    return storage.path(*QUEUE_DIR, f"date={day}", f"{source}.parquet")


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with exactly ASSIGNMENT_SCHEMA's columns (missing optional ones filled with null), validated."""
    missing = [c for c in ("assignment_id", "day", "annotator_id", "item_id", "item_kind", "prompt", "response_a",
                           "response_b") if c not in frame.columns]
    if missing:
        raise ValueError(f"assignments lack required columns {missing}")
    frame = frame.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in ASSIGNMENT_SCHEMA.items()
                                if c not in frame.columns])
    frame = frame.select([pl.col(c).cast(t) for c, t in ASSIGNMENT_SCHEMA.items()])
    bad_kind = frame.filter(~pl.col("item_kind").is_in(ITEM_KINDS))
    if bad_kind.height:
        raise ValueError(f"unknown item_kind {bad_kind['item_kind'].unique().to_list()}; expected {ITEM_KINDS}")
    if frame["assignment_id"].n_unique() != frame.height:
        raise ValueError("assignment_id must be unique")
    qc_without_answer = frame.filter(pl.col("item_kind").is_in(QC_KINDS) & pl.col("expected_label").is_null())
    if qc_without_answer.height:
        raise ValueError(f"{qc_without_answer.height} gold/attention assignments have no expected_label")
    return frame.with_columns(pl.col("round").fill_null(0))


def write_queue(storage: Storage, day: str, source: str, assignments: pl.DataFrame) -> str:
    """Replace the day's queue of ``source`` (atomic). Returns the sha256 of the file written."""
    return storage.write_parquet(queue_path(storage, day, source), conform(assignments))


def read_queue(storage: Storage, day: str, source: str | None = None) -> pl.DataFrame:
    """The day's assignments (of one source, or all), ASSIGNMENT_SCHEMA; empty when nothing was queued."""
    frames = []
    for s in (SOURCES if source is None else (source,)):
        path = queue_path(storage, day, s)
        if storage.exists(path):
            frames.append(conform(storage.read_parquet(path)))
    return pl.concat(frames) if frames else pl.DataFrame(schema=ASSIGNMENT_SCHEMA)


def queued_days(storage: Storage) -> list[str]:
    """Days that have a queue, oldest first."""
    base = storage.path(*QUEUE_DIR)
    if not base.exists():
        return []
    return sorted(p.name.removeprefix("date=") for p in base.iterdir() if p.name.startswith("date="))
