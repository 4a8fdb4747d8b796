"""Inter-annotator agreement over integer-coded label rows (item, annotator, label).

* ``cohen_kappa_pairs``: Cohen's kappa for every pair of annotators who labelled enough of the same items. Pairs are
  found sparsely: rows are sorted by (item, annotator) and each row is paired with the later rows of its item, so the
  work grows with the number of co-labelled (pair, item) combinations, never with annotators squared.
* ``fleiss_kappa_items``: Fleiss' kappa (statsmodels) over the items rated the modal number of times.
* ``annotator_disagreement`` / ``item_disagreement``: how often labels differ from a per-item consensus label;
  ``kappa_against_consensus``: each annotator's Cohen's kappa against it.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from statsmodels.stats.inter_rater import fleiss_kappa

PAIR_SCHEMA = {"annotator_1": pl.Int64, "annotator_2": pl.Int64, "n_overlap": pl.Int64, "kappa": pl.Float64}


def _codes(**arrays) -> list[np.ndarray]:
    out = []
    for name, values in arrays.items():
        arr = np.asarray(values)
        if arr.size == 0:
            arr = arr.reshape(0).astype(np.int64)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be a one-dimensional array of integer codes, got {arr.dtype} {arr.shape}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} must be non-negative codes, found {arr.min()}")
        out.append(arr.astype(np.int64, copy=False))
    if len({len(a) for a in out}) > 1:
        raise ValueError(f"{', '.join(arrays)} must have the same length, got {[len(a) for a in out]}")
    return out


def _first_labels(items, workers, labels):
    """Rows sorted by (item, annotator), keeping each annotator's first label of an item."""
    order = np.lexsort((workers, items))  # stable, so a repeated (item, annotator) keeps its first row first
    items, workers, labels = items[order], workers[order], labels[order]
    keep = np.ones(len(items), dtype=bool)
    keep[1:] = (items[1:] != items[:-1]) | (workers[1:] != workers[:-1])
    return items[keep], workers[keep], labels[keep]


def _same_item_pairs(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (a, b), a < b, of every two rows of the same item; ``items`` must be sorted."""
    firsts, seconds = [], []
    left = np.flatnonzero(items[1:] == items[:-1])
    step = 1
    while left.size:  # one pass per distance within an item: at most (largest item's row count - 1) passes
        firsts.append(left)
        seconds.append(left + step)
        step += 1
        left = left[left + step < len(items)]
        left = left[items[left + step] == items[left]]
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def cohen_kappa_pairs(items, workers, labels, *, min_overlap: int = 20) -> pl.DataFrame:
    """Cohen's kappa of every annotator pair (annotator_1 < annotator_2) that shares at least ``min_overlap`` items.

    Columns: annotator_1, annotator_2 (annotator codes), n_overlap (shared items), kappa (NaN when both always gave
    the same single label, where kappa is undefined).
    """
    if min_overlap < 1:
        raise ValueError(f"min_overlap must be >= 1, got {min_overlap}")
    items, workers, labels = _codes(items=items, workers=workers, labels=labels)
    if not len(items):
        return pl.DataFrame(schema=PAIR_SCHEMA)
    items, workers, labels = _first_labels(items, workers, labels)
    a, b = _same_item_pairs(items)
    n_workers, k = int(workers.max()) + 1, int(labels.max()) + 1
    pairs, pair_of_row, overlap = np.unique(workers[a] * n_workers + workers[b], return_inverse=True,
                                            return_counts=True)
    kept = overlap >= min_overlap
    if not kept.any():
        return pl.DataFrame(schema=PAIR_SCHEMA)
    new_index = np.cumsum(kept) - 1  # position among the kept pairs
    rows = kept[pair_of_row]
    cell = new_index[pair_of_row[rows]] * (k * k) + labels[a[rows]] * k + labels[b[rows]]
    n_kept = int(kept.sum())
    table = np.bincount(cell, minlength=n_kept * k * k).reshape(n_kept, k, k).astype(np.float64)
    n = table.sum(axis=(1, 2))
    observed = np.trace(table, axis1=1, axis2=2) / n
    expected = np.einsum("pk,pk->p", table.sum(axis=2), table.sum(axis=1)) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)
    pairs = pairs[kept]
    return pl.DataFrame({"annotator_1": pairs // n_workers, "annotator_2": pairs % n_workers,
                         "n_overlap": overlap[kept], "kappa": kappa}, schema=PAIR_SCHEMA)


def fleiss_kappa_items(items, labels, n_classes: int) -> tuple[float, int, int]:
    """Fleiss' kappa over the items rated exactly the modal number of times (Fleiss assumes a constant count).

    Returns (kappa, number of items used, ratings per item). kappa is NaN when fewer than 2 items qualify or the
    modal count is below 2. Ties for the modal count go to the smaller count.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    items, labels = _codes(items=items, labels=labels)
    if labels.size and labels.max() >= n_classes:
        raise ValueError(f"labels contains code {labels.max()} but n_classes={n_classes}")
    if not len(items):
        return float("nan"), 0, 0
    n_items = int(items.max()) + 1
    counts = np.bincount(items * n_classes + labels, minlength=n_items * n_classes).reshape(n_items, n_classes)
    raters = counts.sum(axis=1)
    modal = int(np.bincount(raters[raters > 0]).argmax())
    table = counts[raters == modal]
    if len(table) < 2 or modal < 2:
        return float("nan"), len(table), modal
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(fleiss_kappa(table, method="fleiss")), len(table), modal


def _differs(items, labels, consensus):
    consensus = np.asarray(consensus)
    if consensus.ndim != 1:
        raise ValueError(f"consensus must be one label code per item, got shape {consensus.shape}")
    if items.size and items.max() >= len(consensus):
        raise ValueError(f"items contains code {items.max()} but consensus has only {len(consensus)} items")
    return labels != consensus[items]


def annotator_disagreement(items, workers, labels, consensus) -> pl.DataFrame:
    """Per annotator code with labels: n_labels and disagreement_rate, the share of their labels that differ from
    the consensus label (``consensus[item]``) of the item."""
    items, workers, labels = _codes(items=items, workers=workers, labels=labels)
    differs = _differs(items, labels, consensus)
    n = np.bincount(workers)
    present = np.flatnonzero(n)
    rate = np.bincount(workers, weights=differs)[present] / n[present]
    return pl.DataFrame({"annotator": present, "n_labels": n[present], "disagreement_rate": rate},
                        schema={"annotator": pl.Int64, "n_labels": pl.Int64, "disagreement_rate": pl.Float64})


def item_disagreement(items, labels, consensus) -> np.ndarray:
    """Share of each item's labels that differ from its consensus label (NaN for items without labels)."""
    items, labels = _codes(items=items, labels=labels)
    differs = _differs(items, labels, consensus)
    n = np.bincount(items, minlength=len(consensus))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.bincount(items, weights=differs, minlength=len(consensus)) / n


def kappa_against_consensus(items, workers, labels, consensus, n_workers: int, n_classes: int) -> np.ndarray:
    """Cohen's kappa of each annotator code's labels against the consensus label of the same items: (observed
    agreement − chance agreement) / (1 − chance), chance from the annotator's own label shares and the consensus's
    shares over their items. NaN for an annotator without labels or when chance agreement is 1 (both constant)."""
    items, workers, labels = _codes(items=items, workers=workers, labels=labels)
    consensus = np.asarray(consensus)
    agree = ~_differs(items, labels, consensus)
    n = np.bincount(workers, minlength=n_workers).astype(np.float64)
    observed = np.bincount(workers, weights=agree, minlength=n_workers)
    own = np.bincount(workers * n_classes + labels, minlength=n_workers * n_classes).reshape(n_workers, n_classes)
    theirs = np.bincount(workers * n_classes + consensus[items],
                         minlength=n_workers * n_classes).reshape(n_workers, n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_o = observed / n
        p_e = (own * theirs).sum(axis=1) / (n * n)
        return np.where((n > 0) & (p_e < 1), (p_o - p_e) / (1 - p_e), np.nan)
