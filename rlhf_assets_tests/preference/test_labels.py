"""From validated comparisons to labels per pair (no Dagster)."""

import numpy as np
import polars as pl
import pytest

from rlhf_assets.preference.labels import AggregationSettings, aggregate_comparisons
from rlhf_assets.preference.schema import pair_id


def comparisons(rows):
    """rows: (annotator, prompt, shown_first, shown_second, label)."""
    return pl.DataFrame(
        [{"comparison_id": f"c{i}", "annotator_id": a, "prompt": p, "response_a": x, "response_b": y, "label": lab,
          "pair_id": pair_id(p, x, y)} for i, (a, p, x, y, lab) in enumerate(rows)])


def test_swapped_display_is_oriented_and_no_ties_work():
    # "good" is the better response of every pair; annotators see it first or second.
    rows = []
    for k in range(30):
        good, bad = f"good {k}", f"zzz bad {k}"  # canonical order: "good…" < "zzz…"
        for w in range(3):
            first = (k + w) % 2 == 0
            rows.append((f"w{w}", f"p{k}", *((good, bad) if first else (bad, good)), "a" if first else "b"))
    out = aggregate_comparisons(comparisons(rows))
    labels = out.labels
    assert labels.height == 30 and set(labels["label"]) == {"a"}
    assert (labels["chosen"].str.starts_with("good")).all() and (labels["share_a"] == 1.0).all()
    assert (labels["n_votes"] == 3).all()
    assert out.stats["label_counts"] == {"a": 30, "b": 0, "tie": 0}
    assert out.annotators["first_position_rate"].is_between(0.3, 0.7).all()


def test_position_bias_tie_rate_and_majority():
    rng = np.random.default_rng(0)
    rows = []
    for k in range(60):
        good, bad = (f"a good {k}", f"b bad {k}") if k % 2 else (f"z good {k}", f"b bad {k}")  # both orientations
        for w in ("w0", "w1", "w2"):
            swap = rng.random() < 0.5
            shown = (bad, good) if swap else (good, bad)
            rows.append((w, f"p{k}", *shown, "b" if swap else "a"))
        rows.append(("biased", f"p{k}", bad, good, "a"))  # always picks what is shown first
        rows.append(("tier", f"p{k}", good, bad, "tie"))
    for method in ("dawid-skene", "majority"):
        out = aggregate_comparisons(comparisons(rows), AggregationSettings(method=method, min_overlap=10))
        assert out.labels["chosen"].str.contains("good").mean() >= 0.95, method
        table = {r["annotator_id"]: r for r in out.annotators.iter_rows(named=True)}
        assert table["biased"]["first_position_rate"] == 1.0
        assert table["tier"]["tie_rate"] == 1.0
        assert table["biased"]["accuracy"] < table["w0"]["accuracy"]
        assert out.agreement.height == 10  # C(5, 2) pairs, all with 60 shared items
        kappa = {(r["annotator_1"], r["annotator_2"]): r["kappa"] for r in out.agreement.iter_rows(named=True)}
        assert kappa[("w0", "w1")] == pytest.approx(1.0)


def test_empty_input():
    empty = comparisons([("w", "p", "x", "y", "a")]).clear()
    out = aggregate_comparisons(empty)
    assert out.labels.height == 0 and out.stats["pairs"] == 0
