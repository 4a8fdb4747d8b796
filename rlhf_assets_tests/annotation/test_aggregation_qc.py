"""Aggregation with quality control: gold and attention answers never become labels but fill the annotator table;
flagged annotators are kept, excluded or down-weighted."""

import numpy as np
import polars as pl
import pytest

from rlhf_assets.preference.aggregation import dawid_skene, majority_vote
from rlhf_assets.preference.labels import AggregationSettings, aggregate_comparisons
from rlhf_assets.preference.schema import pair_id

GOOD, FLAGGED = ("g1", "g2", "g3"), ("f1", "f2")


def rows_for(annotator, item, label, kind="pair", expected=None):
    prompt, a, b = f"prompt {item}", f"a answer {item}", f"b answer {item}"
    return {"comparison_id": f"{annotator}-{item}", "annotator_id": annotator, "prompt": prompt, "response_a": a,
            "response_b": b, "label": label, "pair_id": pair_id(prompt, a, b), "item_kind": kind,
            "expected_label": expected}


def crowd(contested: int = 6) -> pl.DataFrame:
    """20 easy items everyone gets right (so Dawid–Skene trusts everyone alike), then ``contested`` items where g1
    says "a" and the two flagged annotators say "b"."""
    rows = [rows_for(w, i, "a" if i % 2 else "b") for i in range(20) for w in GOOD + FLAGGED]
    rows += [rows_for(w, 100 + i, "a" if w == "g1" else "b") for i in range(contested) for w in ("g1",) + FLAGGED]
    return pl.DataFrame(rows)


def contested_labels(out) -> set[str]:
    return set(out.labels.filter(pl.col("prompt").str.contains(r"^prompt 1\d\d$"))["label"])


@pytest.mark.parametrize("method", ["majority", "dawid-skene"])
def test_downweight_and_exclude_change_the_aggregate(method):
    flagged = {w: {"reason": "quality control: failed 2 attention checks"} for w in FLAGGED}
    keep = aggregate_comparisons(crowd(), AggregationSettings(method=method), flagged)
    exclude = aggregate_comparisons(crowd(), AggregationSettings(method=method, flagged_annotators="exclude"), flagged)
    down = aggregate_comparisons(crowd(), AggregationSettings(method=method, flagged_annotators="downweight",
                                                              flagged_weight=0.25), flagged)
    assert contested_labels(keep) == {"b"}      # two votes beat one
    assert contested_labels(exclude) == {"a"}   # only g1 is left
    assert contested_labels(down) == {"a"}      # 2 × 0.25 < 1
    assert down.labels.height == keep.labels.height == 26 and exclude.labels.height == 26
    table = {r["annotator_id"]: r for r in down.annotators.iter_rows(named=True)}
    assert table["f1"]["weight"] == 0.25 and table["f1"]["flagged"] and not table["f1"]["excluded"]
    assert table["f1"]["flag_reason"] == "quality control: failed 2 attention checks"
    assert table["g1"]["weight"] == 1.0 and not table["g1"]["flagged"]
    assert down.stats["downweighted_annotators"] == ["f1", "f2"]
    excluded = {r["annotator_id"]: r for r in exclude.annotators.iter_rows(named=True)}
    assert excluded["f1"]["excluded"] and excluded["f1"]["weight"] == 0.0 and excluded["f1"]["n_labels"] == 26


def test_weights_of_one_are_the_unweighted_model_and_bad_weights_are_refused():
    rng = np.random.default_rng(0)
    items, workers, labels = np.repeat(np.arange(40), 3), rng.integers(0, 5, 120), rng.integers(0, 3, 120)
    plain = dawid_skene(items, workers, labels, shrinkage=2.0)
    ones = dawid_skene(items, workers, labels, shrinkage=2.0, weights=np.ones(120))
    np.testing.assert_allclose(plain.posteriors, ones.posteriors)
    assert (majority_vote(items, workers, labels).labels == majority_vote(items, workers, labels,
                                                                          weights=np.ones(120)).labels).all()
    with pytest.raises(ValueError, match="one entry per label row"):
        majority_vote(items, workers, labels, weights=np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        dawid_skene(items, workers, labels, weights=-np.ones(120))


def test_qc_items_never_become_labels_but_fill_the_annotator_table():
    pairs = crowd(contested=0)
    qc = [rows_for("g1", 500 + i, "a", "gold", "a") for i in range(4)]
    qc += [rows_for("g1", 600, "b", "attention", "a"), rows_for("g2", 601, "a", "attention", "a")]
    qc += [rows_for("only_qc", 700 + i, "b", "gold", "a") for i in range(3)]
    out = aggregate_comparisons(pl.concat([pairs, pl.DataFrame(qc)], how="diagonal_relaxed"), AggregationSettings())
    qc_ids = {r["pair_id"] for r in qc}
    assert not qc_ids & set(out.labels["pair_id"])
    assert out.labels.height == 20 and out.stats["comparisons"] == pairs.height and out.stats["qc_answers"] == 9
    table = {r["annotator_id"]: r for r in out.annotators.iter_rows(named=True)}
    assert table["g1"]["gold_n"] == 4 and table["g1"]["gold_accuracy"] == 1.0
    assert table["g1"]["attention_failures"] == 1 and table["g2"]["attention_failures"] == 0
    assert table["only_qc"]["n_labels"] == 0 and table["only_qc"]["gold_accuracy"] == 0.0
    assert table["g3"]["gold_n"] == 0 and table["g3"]["gold_accuracy"] is None
    assert table["g1"]["kappa"] == pytest.approx(1.0)  # all agree with the aggregate on the easy items


def test_item_level_disagreement_is_reported():
    out = aggregate_comparisons(crowd(contested=2), AggregationSettings(method="majority"))
    disputed = out.stats["disputed_items"]
    assert [round(d["disagreement"], 4) for d in disputed] == [0.3333, 0.3333]
    assert {d["label"] for d in disputed} == {"b"} and all(d["n_votes"] == 3 for d in disputed)
    assert out.stats["mean_item_disagreement"] == pytest.approx(2 * (1 / 3) / 22)
