"""Agreement statistics: Cohen's kappa per pair, Fleiss' kappa, disagreement with a consensus."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa

from rlhf_assets.preference.agreement import (
    annotator_disagreement,
    cohen_kappa_pairs,
    fleiss_kappa_items,
    item_disagreement,
)


def _two_raters(table: np.ndarray, first: int = 0, second: int = 1):
    """Rows for two annotators whose joint label counts are ``table`` (first's label x second's label)."""
    pairs = [(i, j) for i in range(table.shape[0]) for j in range(table.shape[1]) for _ in range(table[i, j])]
    n = len(pairs)
    items = np.repeat(np.arange(n), 2)
    workers = np.tile([first, second], n)
    labels = np.array(pairs).ravel()
    return items, workers, labels


def test_cohen_kappa_matches_hand_and_statsmodels():
    table = np.array([[10, 2], [3, 5]])
    items, workers, labels = _two_raters(table)
    result = cohen_kappa_pairs(items, workers, labels, min_overlap=20)
    assert result.columns == ["annotator_1", "annotator_2", "n_overlap", "kappa"]
    assert result.rows() == [(0, 1, 20, pytest.approx((0.75 - 0.53) / 0.47))]  # po = 15/20, pe = .6*.65 + .4*.35
    assert result["kappa"][0] == pytest.approx(cohens_kappa(table).kappa)
    assert cohen_kappa_pairs(items, workers, labels, min_overlap=21).height == 0


def test_cohen_kappa_identical_constant_and_duplicates():
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0] * 3)
    items = np.repeat(np.arange(30), 2)
    identical = cohen_kappa_pairs(items, np.tile([3, 7], 30), np.repeat(labels, 2), min_overlap=5)
    assert identical.rows() == [(3, 7, 30, 1.0)]
    constant = cohen_kappa_pairs(items, np.tile([0, 1], 30), np.zeros(60, dtype=int), min_overlap=5)
    assert np.isnan(constant["kappa"][0])
    # annotator 1 labels item 0 twice: the first label (agreeing) counts, the second is ignored
    items2 = np.concatenate([items, [0]])
    workers2 = np.concatenate([np.tile([0, 1], 30), [1]])
    labels2 = np.concatenate([np.repeat(labels, 2), [(labels[0] + 1) % 3]])
    assert cohen_kappa_pairs(items2, workers2, labels2, min_overlap=5).rows() == [(0, 1, 30, 1.0)]


def test_cohen_kappa_pairs_match_brute_force():
    rng = np.random.default_rng(5)
    n_items, n_workers, k = 400, 12, 3
    truth = rng.integers(0, k, n_items)
    items = np.repeat(np.arange(n_items), 4)
    workers = rng.integers(0, n_workers, len(items))  # duplicates on an item happen: first label wins
    labels = np.where(rng.random(len(items)) < 0.7, truth[items], rng.integers(0, k, len(items)))
    result = cohen_kappa_pairs(items, workers, labels, min_overlap=10)
    first = {}
    for i, w, lab in zip(items, workers, labels):
        first.setdefault((w, i), lab)
    expected = []
    for a, b in itertools.combinations(range(n_workers), 2):
        shared = sorted({i for (w, i) in first if w == a} & {i for (w, i) in first if w == b})
        if len(shared) >= 10:
            table = np.zeros((k, k))
            for i in shared:
                table[first[(a, i)], first[(b, i)]] += 1
            expected.append((a, b, len(shared), cohens_kappa(table).kappa))
    assert len(expected) > 20
    assert result.rows() == [(a, b, n, pytest.approx(kappa)) for a, b, n, kappa in expected]


def test_fleiss_kappa_matches_statsmodels():
    #              label 0, 1, 2 counts per item (3 ratings each), plus an item rated twice (excluded)
    table = np.array([[3, 0, 0], [1, 2, 0], [0, 0, 3], [1, 1, 1], [0, 3, 0], [2, 0, 1]])
    items = np.repeat(np.arange(len(table)), 3)
    labels = np.concatenate([np.repeat(np.arange(3), row) for row in table])
    items = np.concatenate([items, [6, 6]])
    labels = np.concatenate([labels, [0, 1]])
    kappa, n_used, raters = fleiss_kappa_items(items, labels, 3)
    assert (n_used, raters) == (6, 3)
    assert kappa == pytest.approx(fleiss_kappa(table, method="fleiss"))
    single = fleiss_kappa_items([0, 0, 0], [0, 1, 1], 2)
    assert np.isnan(single[0]) and single[1:] == (1, 3)
    with pytest.raises(ValueError, match="n_classes"):
        fleiss_kappa_items([0], [2], 2)


def test_disagreement_rates_by_hand():
    # consensus: item 0 -> 1, item 1 -> 0, item 2 -> 2, item 3 has no labels
    consensus = np.array([1, 0, 2, 0])
    items = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    workers = np.array([0, 1, 4, 0, 1, 0, 1, 4])
    labels = np.array([1, 0, 1, 0, 0, 2, 1, 1])
    table = annotator_disagreement(items, workers, labels, consensus)
    assert table.columns == ["annotator", "n_labels", "disagreement_rate"]
    assert table.rows() == [(0, 3, 0.0), (1, 3, pytest.approx(2 / 3)), (4, 2, 0.5)]
    shares = item_disagreement(items, labels, consensus)
    np.testing.assert_allclose(shares[:3], [1 / 3, 0.0, 2 / 3])
    assert np.isnan(shares[3])
    with pytest.raises(ValueError, match="consensus has only 4 items"):
        item_disagreement([4], [0], consensus)


def test_agreement_input_validation():
    with pytest.raises(ValueError, match="same length"):
        cohen_kappa_pairs([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match="integer codes"):
        cohen_kappa_pairs(["a"], [0], [0])
    with pytest.raises(ValueError, match="min_overlap"):
        cohen_kappa_pairs([0], [0], [0], min_overlap=0)
    assert cohen_kappa_pairs([], [], [], min_overlap=1).height == 0
