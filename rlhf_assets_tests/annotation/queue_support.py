"""Building blocks of the queue and quality-control tests: queued pairs, answers to assignments, a tiny QC pool."""

import polars as pl

from rlhf_assets.annotation.queue import ASSIGNMENT_SCHEMA
from rlhf_assets.preference.schema import pair_id


def pairs(n: int, tag: str = "p") -> pl.DataFrame:
    return pl.DataFrame({"prompt": [f"{tag} prompt {i}" for i in range(n)],
                         "response_a": [f"{tag} first answer {i}" for i in range(n)],
                         "response_b": [f"{tag} second answer {i}" for i in range(n)]})


def qc_pool(n_gold: int = 6, n_attention: int = 6) -> pl.DataFrame:
    rows = []
    for kind, n in (("gold", n_gold), ("attention", n_attention)):
        for i in range(n):
            prompt, a, b = f"{kind} prompt {i}", f"{kind} right {i}", f"{kind} wrong {i}"
            rows.append({"item_id": pair_id(prompt, a, b), "item_kind": kind, "prompt": prompt, "response_a": a,
                         "response_b": b, "expected_label": "a", "construction": "test"})
    return pl.DataFrame(rows)


def answers(assignments: pl.DataFrame, label_of) -> pl.DataFrame:
    """One validated comparison per assignment, shown as queued; ``label_of(row)`` gives its label."""
    rows = []
    for r in assignments.iter_rows(named=True):
        rows.append({"comparison_id": r["assignment_id"], "prompt": r["prompt"], "response_a": r["response_a"],
                     "response_b": r["response_b"], "label": label_of(r), "annotator_id": r["annotator_id"],
                     "created_at": f"{r['day']}T12:00:00Z", "pair_id": pair_id(r["prompt"], r["response_a"],
                                                                               r["response_b"]),
                     "item_kind": r["item_kind"], "expected_label": r["expected_label"], "orientation": "as_queued"})
    return pl.DataFrame(rows)


def empty_queue() -> pl.DataFrame:
    return pl.DataFrame(schema=ASSIGNMENT_SCHEMA)
