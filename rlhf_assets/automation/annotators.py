"""Annotator disagreement: a day whose Fleiss' kappa falls below the days before it, and annotators whose estimated
reliability collapsed against their own history. Flagged annotators are kept in the storage root
(``monitoring/annotators/flagged.json``) so the next aggregation can exclude or down-weight them
(``aggregated_labels``' ``flagged_annotators``), and the annotator table says who was flagged and why. The annotation
queue's quality control (annotation/quality.py) flags through the same list (:func:`add_flags`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets.storage import Storage

FLAGGED = ("monitoring", "annotators", "flagged.json")


@dataclass
class AnnotatorReview:
    day: str
    kappa: float | None
    kappa_history: float | None  # mean over the earlier days
    history_days: int
    kappa_alarm: bool
    collapsed: list[dict[str, Any]] = field(default_factory=list)  # {annotator_id, accuracy, history, n_labels, drop}

    @property
    def alarm(self) -> bool:
        return self.kappa_alarm or bool(self.collapsed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"alarm": self.alarm}


def review(day: str, kappas: dict[str, float | None], tables: dict[str, pl.DataFrame],
           settings: AutomationSettings) -> AnnotatorReview:
    """Compare ``day`` with the days before it: ``kappas`` (day → Fleiss' kappa) and ``tables`` (day → the
    annotator_reliability table: annotator_id, n_labels, accuracy)."""
    earlier = sorted(d for d in tables if d < day)
    past = [kappas[d] for d in earlier if kappas.get(d) is not None]
    kappa = kappas.get(day)
    history = sum(past) / len(past) if past else None
    enough = len(earlier) >= settings.min_history_days
    kappa_alarm = bool(enough and kappa is not None and history is not None
                       and kappa < history - settings.max_kappa_drop)
    collapsed: list[dict[str, Any]] = []
    today = tables.get(day)
    if enough and today is not None and today.height:
        past_rows = pl.concat([tables[d].select("annotator_id", "n_labels", "accuracy") for d in earlier])
        # each annotator's history: their label-weighted mean accuracy over the earlier days
        hist = (past_rows.filter(pl.col("accuracy").is_not_null() & pl.col("accuracy").is_not_nan())
                .group_by("annotator_id")
                .agg((pl.col("accuracy") * pl.col("n_labels")).sum().alias("w"), pl.col("n_labels").sum().alias("n"))
                .with_columns((pl.col("w") / pl.col("n")).alias("history")))
        joined = today.select("annotator_id", "n_labels", "accuracy").join(hist, on="annotator_id", how="inner")
        for row in joined.iter_rows(named=True):
            if (row["n_labels"] >= settings.min_annotator_labels and row["n"] >= settings.min_annotator_labels
                    and row["accuracy"] is not None and row["accuracy"] == row["accuracy"]
                    and row["accuracy"] < row["history"] - settings.max_accuracy_drop):
                collapsed.append({"annotator_id": row["annotator_id"], "accuracy": round(row["accuracy"], 4),
                                  "history": round(row["history"], 4), "n_labels": int(row["n_labels"]),
                                  "drop": round(row["history"] - row["accuracy"], 4)})
    return AnnotatorReview(day, kappa, history, len(earlier), kappa_alarm,
                           sorted(collapsed, key=lambda c: -c["drop"]))


def read_flagged(storage: Storage) -> dict[str, dict[str, Any]]:
    """annotator id → {reason, day, accuracy, history}: who the sensor flagged."""
    path = storage.path(*FLAGGED)
    return storage.read_json(path) if path.exists() else {}


def add_flags(storage: Storage, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add annotators to the flagged list: annotator id → {reason, day, …}. An annotator already there keeps their
    first flag (its day and reason). Both the disagreement sensor (:func:`flag`) and the quality control of the
    annotation queue (annotation/quality.py: gold accuracy, attention checks) flag through here. Returns the list."""
    flagged = read_flagged(storage)
    added = {k: v for k, v in entries.items() if k not in flagged}
    if added or not storage.path(*FLAGGED).exists():
        flagged.update(added)
        storage.write_json(storage.path(*FLAGGED), flagged)
    return flagged


def flag(storage: Storage, review_: AnnotatorReview) -> dict[str, dict[str, Any]]:
    """Add the review's collapsed annotators to the flagged list (an earlier flag keeps its first day)."""
    return add_flags(storage, {c["annotator_id"]: {
        "reason": f"estimated accuracy {c['accuracy']:.3f} on {review_.day}, {c['drop']:.3f} below their history "
                  f"({c['history']:.3f})", "day": review_.day, "accuracy": c["accuracy"], "history": c["history"]}
        for c in review_.collapsed})
