"""A synthetic crowd for the aggregation benchmark, written to Parquet in chunks (never whole in memory).

Items (pairs) have a true class among a / b / tie (priors 0.45 / 0.45 / 0.10) and 3-5 labels each. Annotators have
confusion matrices of four kinds: reliable (70%: accuracy 0.65-0.95, errors spread at random), position-biased
(12%: errors go to "a"), tie-happy (12%: errors go to "tie") and spammers (6%: the same random answer distribution
whatever the truth). Activity is skewed (Zipf-like): a few annotators label much more than most. Annotators label
an item at most once.

Each chunk holds whole items, its rows shuffled, one Parquet row group per chunk. Item ids are scrambled numbers
("pair-0000123456789"), so their order says nothing; :func:`item_index` inverts the scrambling, which is how the
truth (one int8 per item, saved beside the file) is looked up without a join.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

CLASSES = ("a", "b", "tie")
PRIORS = np.array([0.45, 0.45, 0.10])
_BITS = 40  # item numbers are scrambled by an odd multiplier modulo 2^40
_MULTIPLIER = 0x9E3779B97F & ((1 << _BITS) - 1) | 1
_INVERSE = pow(_MULTIPLIER, -1, 1 << _BITS)


@dataclass(frozen=True)
class Crowd:
    path: Path
    truth_path: Path
    rows: int
    items: int
    annotators: int
    chunk_items: list[int]  # items per row group


def item_ids(index: np.ndarray) -> pl.Series:
    scrambled = (index.astype(np.uint64) * np.uint64(_MULTIPLIER)) & np.uint64((1 << _BITS) - 1)
    return "pair-" + pl.Series(scrambled).cast(pl.String).str.zfill(13)


def item_index(ids: pl.Series) -> np.ndarray:
    """The generator's item number of each id (the inverse of :func:`item_ids`)."""
    scrambled = ids.str.slice(5).cast(pl.UInt64).to_numpy()
    return ((scrambled * np.uint64(_INVERSE)) & np.uint64((1 << _BITS) - 1)).astype(np.int64)


def confusions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, K, K) confusion matrices P(answer | truth) of the four kinds of annotator."""
    k = len(CLASSES)
    kind = rng.choice(4, size=n, p=[0.70, 0.12, 0.12, 0.06])
    accuracy = np.where(kind == 0, rng.uniform(0.65, 0.95, n), rng.uniform(0.5, 0.8, n))
    errors = rng.dirichlet(np.ones(k), size=(n, k))  # reliable: errors spread at random
    errors[kind == 1] = [1.0, 0.0, 0.0]  # position-biased: "a"
    errors[kind == 2] = [0.0, 0.0, 1.0]  # tie-happy: "tie"
    eye = np.eye(k, dtype=bool)
    errors = np.where(eye, 0.0, errors)
    errors /= np.maximum(errors.sum(axis=2, keepdims=True), 1e-12)
    errors[errors.sum(axis=2) == 0] = (1 - np.eye(k))[np.nonzero(errors.sum(axis=2) == 0)[1]] / (k - 1)
    conf = errors * (1 - accuracy)[:, None, None] + eye * accuracy[:, None, None]
    spam = kind == 3
    conf[spam] = rng.dirichlet(np.ones(k), size=int(spam.sum()))[:, None, :]  # same row for every truth
    return conf


def _distinct_annotators(items: np.ndarray, weights_cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An annotator per row drawn by activity, redrawn where one annotator got the same item twice."""
    workers = np.searchsorted(weights_cdf, rng.random(len(items)))
    while True:
        order = np.lexsort((workers, items))
        dup = np.zeros(len(items), dtype=bool)
        dup[order[1:]] = (items[order[1:]] == items[order[:-1]]) & (workers[order[1:]] == workers[order[:-1]])
        if not dup.any():
            return workers
        workers[dup] = np.searchsorted(weights_cdf, rng.random(int(dup.sum())))


def write_crowd(path: Path | str, rows: int, *, annotators: int | None = None, chunk_rows: int = 1_000_000,
                seed: int = 0) -> Crowd:
    """About ``rows`` label rows (item_id, annotator_id, label) to ``path``; the truth to ``<path>.truth.npy``."""
    if chunk_rows < 5:
        raise ValueError(f"chunk_rows must be at least 5 (items have 3-5 labels), got {chunk_rows}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    annotators = annotators or int(min(max(500, rows // 5_000), 20_000))
    conf = confusions(annotators, rng)
    cum = np.cumsum(conf, axis=2)
    activity = 1.0 / (rng.permutation(annotators) + 20.0) ** 0.9
    activity_cdf = np.cumsum(activity / activity.sum())
    activity_cdf[-1] = 1.0
    names = pl.Series([f"annotator-{i:05d}" for i in range(annotators)])
    classes = pl.Series(CLASSES)
    truths, chunk_items, written, first_item, writer = [], [], 0, 0, None
    try:
        while rows - written >= 5:
            n_items = max(min(chunk_rows, rows - written) // 4, 1)
            votes = rng.integers(3, 6, n_items)
            keep = np.cumsum(votes) <= rows - written  # never more rows than asked for
            votes = votes[keep]
            n_items = len(votes)
            truth = rng.choice(len(CLASSES), size=n_items, p=PRIORS)
            items = np.repeat(np.arange(n_items), votes)
            workers = _distinct_annotators(items, activity_cdf, rng)
            row_cum = cum[workers, truth[items]]
            labels = np.minimum((rng.random(len(items))[:, None] > row_cum).sum(axis=1), len(CLASSES) - 1)
            order = rng.permutation(len(items))
            table = pl.DataFrame({
                "item_id": item_ids(first_item + items[order]),
                "annotator_id": names.gather(workers[order]),
                "label": classes.gather(labels[order]),
            }).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table, row_group_size=len(items))
            truths.append(truth.astype(np.int8))
            chunk_items.append(n_items)
            written += len(items)
            first_item += n_items
    finally:
        if writer is not None:
            writer.close()
    truth_path = path.with_suffix(".truth.npy")
    np.save(truth_path, np.concatenate(truths))
    return Crowd(path, truth_path, written, first_item, annotators, chunk_items)


def accuracy(output: Path | str, truth_path: Path | str, batch_rows: int = 1_000_000) -> tuple[float, int]:
    """(share of items whose aggregated label is the truth, items) of an (item_id, label) Parquet output, read in
    batches."""
    truth = np.load(truth_path)
    codes = {name: i for i, name in enumerate(CLASSES)}
    right = total = 0
    for batch in pq.ParquetFile(str(output)).iter_batches(batch_size=batch_rows, columns=["item_id", "label"]):
        frame = pl.from_arrow(batch)
        predicted = frame["label"].replace_strict(codes, return_dtype=pl.Int8).to_numpy()
        right += int((truth[item_index(frame["item_id"])] == predicted).sum())
        total += frame.height
    return right / max(total, 1), total
