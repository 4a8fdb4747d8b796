"""Majority vote and Dawid-Skene: hand-checkable cases, parameter errors, crowd-kit parity, bluebirds accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml

from rlhf_assets.preference.aggregation import AggregationResult, aggregate_table, dawid_skene, majority_vote

BLUEBIRDS = Path(__file__).resolve().parents[1] / "data" / "bluebirds"


def _rows(*triples: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items, workers, labels = (np.array(column) for column in zip(*triples))
    return items, workers, labels


def _synthetic(n_items=3_000, per_item=5, k=3, n_workers=50, seed=0):
    """Items x per_item labels by distinct annotators of accuracy 0.35-0.95, errors uniform over other classes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n_items)
    accuracy = rng.uniform(0.35, 0.95, n_workers)
    workers = np.argsort(rng.random((n_items, n_workers)), axis=1)[:, :per_item].ravel()
    items = np.repeat(np.arange(n_items), per_item)
    correct = rng.random(len(items)) < accuracy[workers]
    labels = np.where(correct, truth[items], (truth[items] + rng.integers(1, k, len(items))) % k)
    return items, workers, labels, truth


@pytest.fixture(scope="module")
def bluebirds() -> tuple[pd.DataFrame, pd.Series]:
    labels = yaml.safe_load((BLUEBIRDS / "labels.yaml").read_text())
    gold = yaml.safe_load((BLUEBIRDS / "gt.yaml").read_text())
    frame = pd.DataFrame([(image, worker, int(value)) for worker, answers in labels.items()
                          for image, value in answers.items()], columns=["task", "worker", "label"])
    return frame, pd.Series({image: int(value) for image, value in gold.items()}).sort_index()


# --- majority vote ---------------------------------------------------------------------------------------------


def test_majority_vote_clear_majority():
    items, workers, labels = _rows((0, 0, 1), (0, 1, 1), (0, 2, 0), (1, 0, 2), (1, 1, 2), (1, 2, 2), (2, 3, 0))
    result = majority_vote(items, workers, labels, n_classes=3)
    assert isinstance(result, AggregationResult) and result.method == "majority"
    assert result.labels.tolist() == [1, 2, 0]
    np.testing.assert_allclose(result.posteriors, [[1 / 3, 2 / 3, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(result.priors, [4 / 9, 2 / 9, 1 / 3])
    assert result.confusion is None


def test_majority_vote_ties_are_seeded():
    n = 200  # every item: one vote for class 0, one for class 1
    items, workers, labels = np.repeat(np.arange(n), 2), np.tile([0, 1], n), np.tile([0, 1], n)
    first = majority_vote(items, workers, labels, seed=7)
    assert np.array_equal(first.labels, majority_vote(items, workers, labels, seed=7).labels)
    assert 0.3 < first.labels.mean() < 0.7  # both classes win some ties
    np.testing.assert_allclose(first.posteriors, 0.5)
    one_item = {int(majority_vote(items[:2], workers[:2], labels[:2], seed=s).labels[0]) for s in range(20)}
    assert one_item == {0, 1}


# --- Dawid-Skene -----------------------------------------------------------------------------------------------


def test_dawid_skene_trusts_the_reliable_annotator():
    """Annotator 0 is right 90% of the time, 1 always answers (truth + 1) % 3, 2 answers at random."""
    rng = np.random.default_rng(1)
    n, k = 300, 3
    truth = rng.integers(0, k, n)
    reliable = np.where(rng.random(n) < 0.9, truth, rng.integers(0, k, n))
    labels = np.stack([reliable, (truth + 1) % k, rng.integers(0, k, n)], axis=1).ravel()
    items, workers = np.repeat(np.arange(n), 3), np.tile([0, 1, 2], n)
    ds = dawid_skene(items, workers, labels)
    mv = majority_vote(items, workers, labels)
    assert (ds.labels == truth).mean() > 0.95 > 0.5 > (mv.labels == truth).mean()
    assert (ds.labels == reliable).mean() > 0.95
    assert ds.converged and 1 <= ds.n_iter < 100 and np.isfinite(ds.log_likelihood)
    np.testing.assert_allclose(ds.confusion.sum(axis=2), 1.0)
    np.testing.assert_allclose(ds.posteriors.sum(axis=1), 1.0)
    assert np.all(np.diagonal(ds.confusion[0]) > 0.9)  # reliable
    assert np.all(ds.confusion[1][np.arange(k), (np.arange(k) + 1) % k] > 0.9)  # adversarial, learnt as such


def test_shrinkage_pulls_sparse_annotator_toward_pooled():
    items, workers, labels, _ = _synthetic(n_items=400, per_item=4, k=3, n_workers=8, seed=3)
    # annotator 8 labels only two items
    items = np.concatenate([items, [0, 1]])
    workers = np.concatenate([workers, [8, 8]])
    labels = np.concatenate([labels, labels[[0, 4]]])
    raw = dawid_skene(items, workers, labels)
    shrunk = dawid_skene(items, workers, labels, shrinkage=5.0)

    # the returned matrices follow (counts + s * pooled) / (row total + s), counts from the final posteriors
    k = 3
    counts = np.zeros((9, k, k))
    np.add.at(counts, (workers, slice(None), labels), shrunk.posteriors[items])
    pooled = counts.sum(axis=0) / counts.sum(axis=(0, 2))[:, None]
    expected = (counts + 5.0 * pooled) / (counts.sum(axis=2, keepdims=True) + 5.0)
    np.testing.assert_allclose(shrunk.confusion, expected, rtol=1e-6)

    distance = lambda conf: np.abs(conf[8] - pooled).sum()  # noqa: E731
    assert distance(shrunk.confusion) < 0.5 * distance(raw.confusion)
    assert raw.confusion[8].max() > 0.99  # unshrunk: one-hot rows from two labels
    assert np.abs(shrunk.confusion[:8] - raw.confusion[:8]).max() < 0.1  # 200 labels each: barely moved


def test_declared_sizes_and_init_array():
    items, workers, labels = _rows((0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1))
    result = dawid_skene(items, workers, labels, n_items=3, n_workers=4, n_classes=3)
    assert result.posteriors.shape == (3, 3) and result.confusion.shape == (4, 3, 3)
    assert result.labels[:2].tolist() == [0, 1]
    np.testing.assert_allclose(result.posteriors[2], result.priors, atol=1e-4)  # no labels: (last E-step) prior
    start = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert dawid_skene(items, workers, labels, init=start).labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(items=[], workers=[], labels=[]), "empty"),
        (dict(items=[0, 1], workers=[0], labels=[0, 1]), "same length"),
        (dict(items=[0, -1], workers=[0, 1], labels=[0, 1]), "items must be non-negative"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 3], n_classes=3), "labels contains code 3 but n_classes=3"),
        (dict(items=[0, 5], workers=[0, 1], labels=[0, 1], n_items=5), "items contains code 5 but n_items=5"),
        (dict(items=[0, 1], workers=[0, 2], labels=[0, 1], n_workers=2), "workers contains code 2"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 0], n_classes=1), "n_classes must be at least 2"),
        (dict(items=[0.0, 1.0], workers=[0, 1], labels=[0, 1]), "integer codes"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 1], tol=0), "tol must be > 0"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 1], max_iter=0), "max_iter must be an integer >= 1"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 1], shrinkage=-1.0), "shrinkage must be >= 0"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 1], init="uniform"), "init must be 'majority'"),
        (dict(items=[0, 1], workers=[0, 1], labels=[0, 1], init=np.ones((3, 2))), r"shape \(2, 2\)"),
    ],
)
def test_dawid_skene_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dawid_skene(**kwargs)


def test_majority_vote_rejects_bad_input():
    with pytest.raises(ValueError, match="labels contains code 2 but n_classes=2"):
        majority_vote([0, 1], [0, 1], [0, 2], n_classes=2)


# --- aggregate_table -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "numpy", "pandas", "polars"])
def test_aggregate_table_with_string_ids(kind):
    rows = [("p2", "ann-x", "b"), ("p2", "ann-y", "b"), ("p2", "ann-z", "a"),
            ("p1", "ann-x", "tie"), ("p1", "ann-y", "tie"), ("p1", "ann-z", "tie"), ("p3", "ann-x", "a")]
    columns = [list(c) for c in zip(*rows)]
    convert = {"list": list, "numpy": np.array, "pandas": pd.Series, "polars": pl.Series}[kind]
    for method in ("dawid-skene", "majority"):
        table, summary = aggregate_table(*(convert(c) for c in columns), method=method)
        assert table.columns == ["item_id", "label", "confidence", "n_votes"]
        assert table["item_id"].to_list() == ["p1", "p2", "p3"]
        assert table["label"].to_list() == ["tie", "b", "a"]
        assert table["n_votes"].to_list() == [3, 3, 1]
        assert table["confidence"][0] == pytest.approx(1.0)
        assert 0.5 < table["confidence"][1] <= 1.0
        assert (summary.n_items, summary.n_annotators, summary.n_rows, summary.n_classes) == (3, 3, 7, 3)
        assert summary.classes == ("a", "b", "tie") and summary.method == method


def test_aggregate_table_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        aggregate_table(["i"], ["w"], ["a"], method="mean")
    with pytest.raises(ValueError, match="same length"):
        aggregate_table(["i", "j"], ["w"], ["a"])
    with pytest.raises(ValueError, match="labels contains missing values"):
        aggregate_table(["i", "j"], ["w", "w"], ["a", None])
    with pytest.raises(ValueError, match="tol must be > 0"):
        aggregate_table(["i", "j"], ["w", "w"], ["a", "b"], tol=-1.0)


# --- parity with crowd-kit and accuracy ------------------------------------------------------------------------


def test_parity_with_crowdkit_synthetic():
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    items, workers, labels, truth = _synthetic()
    frame = pd.DataFrame({"task": items, "worker": workers, "label": labels})
    model = crowdkit.DawidSkene(n_iter=100, tol=1e-5)
    theirs = model.fit_predict(frame).sort_index().to_numpy()
    ours = dawid_skene(items, workers, labels, max_iter=100, tol=1e-5)
    assert (ours.labels == theirs).mean() >= 0.999
    assert ours.n_iter == len(model.loss_history_)
    assert ours.log_likelihood == pytest.approx(model.loss_history_[-1], rel=1e-9)
    np.testing.assert_allclose(ours.posteriors, model.probas_.sort_index()[[0, 1, 2]].to_numpy(), atol=1e-6)
    assert (ours.labels == truth).mean() == pytest.approx((theirs == truth).mean(), abs=1e-3)


def test_bluebirds_parity_and_accuracy(bluebirds):
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    frame, gold = bluebirds
    table, summary = aggregate_table(frame["task"], frame["worker"], frame["label"])
    majority, _ = aggregate_table(frame["task"], frame["worker"], frame["label"], method="majority")
    assert (summary.n_items, summary.n_annotators, summary.n_rows) == (108, 39, 4212)
    assert table["item_id"].to_list() == gold.index.tolist()
    ds_accuracy = float(np.mean(table["label"].to_numpy() == gold.to_numpy()))
    mv_accuracy = float(np.mean(majority["label"].to_numpy() == gold.to_numpy()))
    assert mv_accuracy == pytest.approx(0.759, abs=1e-3)
    assert ds_accuracy > mv_accuracy
    assert ds_accuracy == pytest.approx(0.889, abs=1e-3)  # 96 / 108, as crowd-kit
    theirs = crowdkit.DawidSkene(n_iter=100, tol=1e-5).fit_predict(frame).sort_index().to_numpy()
    assert np.mean(table["label"].to_numpy() == theirs) >= 0.999
