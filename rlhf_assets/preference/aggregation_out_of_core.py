"""Dawid–Skene past memory: EM over a Parquet dataset larger than RAM, in memory bounded by ``batch_rows``.

Three stages, each vectorised per batch (polars / numpy; no Python loop over rows):

1. Partition. The input is read one record batch at a time (pyarrow.dataset, at most ``batch_rows`` rows, no
   read-ahead). Annotator ids and labels get integer codes from small vocabularies (first appearance), and each row
   goes to one of P bucket files chosen by a hash of its item id, so that all labels of an item share a bucket;
   P = rows / batch_rows (with slack), so a bucket holds about one batch.
2. Encode. Each bucket is sorted by a 64-bit hash of the item id (by the id itself should two ids collide): its
   items get dense codes (the runs of equal ids) and an item's rows become contiguous. Two flat int32 files receive every row's item code (within its bucket) and its
   (annotator, label) cell; the item ids and vote counts go to an Arrow stream, bucket after bucket.
3. EM. Since an item's rows are contiguous, one sequential pass over the flat files computes the E-step of a bucket's
   items and adds their posteriors to the M-step's confusion counts, so one iteration is one pass, and what stays in
   memory is the sufficient statistics (annotators x K x K counts, K priors) plus a bucket per thread (two threads
   on two cores: numpy's gathers and ufuncs release the GIL). Posteriors are not
   kept between passes; a last pass recomputes the final ones and streams the output.

Start (majority-vote shares), floors, shrinkage, evidence bound and stopping rule are aggregation.py's, so the
labels are the in-memory path's up to floating-point summation order. The output's items come bucket by bucket
(in hash order), not sorted by item id as the in-memory table is.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from rlhf_assets.preference import aggregation as em  # the EM steps, shared with the in-memory path
from rlhf_assets.preference.aggregation import METHODS, AggregationSummary

REQUIRED = ("item_id", "annotator_id", "label")
_SLACK = 1.25  # buckets are sized rows / P; hashing spreads them unevenly by a few percent at most
_MAX_BUCKETS = 4096  # open files while partitioning (and at most the open-file limit allows)
_SHOWN = 5  # rows quoted in an error message
_BUCKET_SEED, _GROUP_SEED = 0x5EED, 0xB0C5  # item-id hashes: which bucket; the order within a bucket


class LabelInputError(ValueError):
    """The labels cannot be aggregated; the message says why and accounts for the rows read."""


@dataclass(frozen=True)
class _Bucket:
    row_start: int
    n_rows: int
    n_items: int


@dataclass
class _Encoded:
    """The rows on disk, grouped by item, plus the small vocabularies."""

    workdir: Path
    buckets: list[_Bucket]
    annotators: pl.Series
    classes: pl.Series
    observed: np.ndarray  # (n_annotators, 1, K) bool: the (annotator, label) cells that occur
    n_rows: int

    @property
    def n_items(self) -> int:
        return sum(b.n_items for b in self.buckets)

    def rows(self, bucket: _Bucket) -> tuple[np.ndarray, np.ndarray]:
        """(item code within the bucket, annotator * K + label) of the bucket's rows, read from disk."""
        offset = bucket.row_start * 4
        items = np.fromfile(self.workdir / "items.i32", np.int32, bucket.n_rows, offset=offset).astype(np.intp)
        cells = np.fromfile(self.workdir / "cells.i32", np.int32, bucket.n_rows, offset=offset).astype(np.intp)
        return items, cells

    def item_ids(self) -> Iterator[pa.RecordBatch]:
        """item_id and n_votes, one batch per bucket, in bucket order."""
        with pa.OSFile(str(self.workdir / "items.arrow"), "rb") as source:
            yield from pa.ipc.open_stream(source)


@dataclass(frozen=True)
class OutOfCoreResult:
    summary: AggregationSummary
    confusion: np.ndarray | None  # (n_annotators, K, K), rows sum to 1; None for majority vote
    priors: np.ndarray
    annotators: list[str]  # the annotator of each confusion matrix
    log_likelihood: float
    stages: dict[str, float]  # wall seconds: partition_s, encode_s, em_s, output_s


def open_parquet(source: Path | str) -> ds.Dataset:
    """The Parquet file or directory as a dataset, after checking that the required columns exist."""
    source = Path(source)
    if not source.exists():
        raise LabelInputError(f"{source}: no such file or directory")
    try:
        # pre_buffer (the default) caches column chunks of the row groups already read: memory grows with the file
        scan = ds.ParquetFragmentScanOptions(pre_buffer=False)
        dataset = ds.dataset(source, format=ds.ParquetFileFormat(default_fragment_scan_options=scan))
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise LabelInputError(f"{source}: cannot read as Parquet: {str(exc).splitlines()[0][:300]}") from None
    missing = [c for c in REQUIRED if c not in dataset.schema.names]
    if missing:
        raise LabelInputError(f"{source}: missing column(s) {', '.join(missing)}; "
                              f"found {', '.join(dataset.schema.names) or 'none'}")
    return dataset


def read_batches(dataset: ds.Dataset, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The required columns, at most ``batch_rows`` rows at a time, one batch in flight (no read-ahead)."""
    return dataset.to_batches(columns=list(REQUIRED), batch_size=batch_rows, batch_readahead=0,
                              fragment_readahead=0)


class _Vocabulary:
    """Integer codes of the few distinct values of a column (annotators, labels), in order of first appearance."""

    def __init__(self) -> None:
        self.values = pl.Series("value", [], pl.String)

    def codes(self, column: pl.Series) -> pl.Series:
        seen = column.unique(maintain_order=True)
        new = seen.filter(~seen.is_in(self.values.implode()))
        if len(new):  # copied: a slice of the batch would keep the whole batch's string buffers alive
            self.values = pl.concat([self.values, pl.Series("value", new.to_list(), pl.String)])
        codes = pl.Series(np.arange(len(self.values), dtype=np.int32))
        return column.replace_strict(self.values, codes, return_dtype=pl.Int32)


def _partition(batches, source: str, n_buckets: int, workdir: Path) -> tuple[list[Path], _Vocabulary,
                                                                                  _Vocabulary, int]:
    """Stage 1. After a bad row the remaining batches are still read, so that the error accounts for every row."""
    annotators, labels = _Vocabulary(), _Vocabulary()
    paths = [workdir / f"bucket-{b:05d}.arrow" for b in range(n_buckets)]
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    n_rows, n_bad, null_counts, first_bad = 0, 0, dict.fromkeys(REQUIRED, 0), []
    try:
        for batch in batches:
            frame = pl.from_arrow(batch).select(pl.col(c).cast(pl.String) for c in REQUIRED)
            nulls = frame.null_count().row(0)
            if any(nulls):
                for column, count in zip(REQUIRED, nulls, strict=True):
                    null_counts[column] += count
                bad = frame.with_row_index().filter(pl.any_horizontal(pl.col(REQUIRED).is_null()))["index"]
                first_bad += [n_rows + int(i) for i in bad.head(_SHOWN)][: _SHOWN - len(first_bad)]
                n_bad += len(bad)
            if n_bad:  # nothing more is written once a bad row is seen
                n_rows += frame.height
                continue
            frame = frame.with_columns(
                annotators.codes(frame["annotator_id"]).alias("annotator_id"),
                labels.codes(frame["label"]).cast(pl.Int16).alias("label"),
                (pl.col("item_id").hash(seed=_BUCKET_SEED) % n_buckets).alias("bucket"),
            )
            for (bucket,), part in frame.partition_by("bucket", as_dict=True, include_key=False).items():
                table = part.to_arrow()
                if bucket not in writers:
                    writers[bucket] = pa.ipc.new_stream(str(paths[bucket]), table.schema)
                writers[bucket].write_table(table)
            n_rows += frame.height
    finally:
        for writer in writers.values():
            writer.close()
    if n_bad:
        detail = ", ".join(f"{column} {count:,}" for column, count in null_counts.items() if count)
        raise LabelInputError(
            f"{source}: {n_bad:,} of {n_rows:,} row(s) have an empty item_id, annotator_id or label (nulls per column: "
            f"{detail}; first at row(s) {', '.join(map(str, first_bad))}, 0-based); the other {n_rows - n_bad:,} "
            "rows are valid; nothing was aggregated")
    if n_rows == 0:
        raise LabelInputError(f"{source}: no rows")
    return [p for b, p in enumerate(paths) if b in writers], annotators, labels, n_rows


def _group_by_item(frame: pl.DataFrame, key: pl.Expr | None = None) -> pl.DataFrame:
    """The bucket's rows with each item's rows contiguous, and ``first`` marking an item's first row.

    Sorting 64-bit hashes is several times faster than sorting strings; equal hashes of different ids (about one
    bucket in 10^7 at 10^6 rows) are detected exactly and that bucket is sorted by the ids themselves.
    """
    key = pl.col("item_id").hash(seed=_GROUP_SEED) if key is None else key  # a test passes a colliding one
    frame = frame.with_columns(key.alias("key")).sort("key")
    same_key = pl.col("key") == pl.col("key").shift(1)
    same_id = pl.col("item_id") == pl.col("item_id").shift(1)
    if frame.select((same_key & ~same_id).any()).item():  # a hash collision
        frame = frame.sort("item_id")
        return frame.with_columns((~same_id).fill_null(True).alias("first"))
    return frame.with_columns((~same_key).fill_null(True).alias("first"))


def _encode(bucket_paths: list[Path], annotators: _Vocabulary, labels: _Vocabulary, n_rows: int,
            workdir: Path) -> _Encoded:
    """Stage 2: each bucket sorted by item id into the flat files; bucket files are deleted once encoded."""
    classes = labels.values.sort()
    k = len(classes)
    if k < 2:
        raise LabelInputError(f"only one distinct label ({classes.to_list()}); nothing to aggregate")
    # first-appearance label code -> its rank among the sorted classes (the in-memory path's class order)
    rank = np.empty(k, dtype=np.int32)
    rank[np.argsort(labels.values.to_numpy(), kind="stable")] = np.arange(k, dtype=np.int32)
    n_workers = len(annotators.values)
    cell_counts = np.zeros(n_workers * k, dtype=np.int64)
    buckets, row_start, writer = [], 0, None
    with open(workdir / "items.i32", "wb") as item_file, open(workdir / "cells.i32", "wb") as cell_file:
        try:
            for path in bucket_paths:
                with pa.memory_map(str(path)) as source:
                    frame = _group_by_item(pl.from_arrow(pa.ipc.open_stream(source).read_all()))
                path.unlink()
                first = frame["first"].to_numpy()
                starts = np.flatnonzero(first)
                n_votes = np.diff(starts, append=len(first))
                items = (np.cumsum(first, dtype=np.int32) - 1).astype(np.int32, copy=False)
                cells = frame["annotator_id"].to_numpy() * np.int32(k) + rank[frame["label"].to_numpy()]
                items.tofile(item_file)
                cells.astype(np.int32, copy=False).tofile(cell_file)
                cell_counts += np.bincount(cells, minlength=n_workers * k)
                table = pa.table({"item_id": frame["item_id"].gather(starts).to_arrow(),
                                  "n_votes": pa.array(n_votes, pa.int64())})
                if writer is None:
                    writer = pa.ipc.new_stream(str(workdir / "items.arrow"), table.schema)
                writer.write_table(table)
                buckets.append(_Bucket(row_start, frame.height, len(n_votes)))
                row_start += frame.height
        finally:
            if writer is not None:
                writer.close()
    observed = (cell_counts > 0).reshape(n_workers, 1, k)
    return _Encoded(workdir, buckets, annotators.values, classes, observed, n_rows)


@dataclass
class _PassStats:
    counts: np.ndarray  # (n_annotators, K, K) confusion counts
    prior_sum: np.ndarray  # (K,) sum of posteriors over items
    post_votes: np.ndarray  # (K,) sum over items of posterior x votes
    neg_entropy: float

    def add(self, other: _PassStats) -> None:
        self.counts += other.counts
        self.prior_sum += other.prior_sum
        self.post_votes += other.post_votes
        self.neg_entropy += other.neg_entropy


def _posteriors(data: _Encoded, bucket: _Bucket, log_conf, log_prior) -> tuple[np.ndarray, float, np.ndarray,
                                                                                np.ndarray]:
    """(posteriors (K, items), sum of q log q, item codes, cells) of one bucket; vote shares (the majority start)
    when ``log_conf`` is None."""
    k = len(data.classes)
    items, cells = data.rows(bucket)
    if log_conf is None:
        return em._shares(em._vote_counts(items, cells % k, bucket.n_items, k)), 0.0, items, cells
    starts = np.flatnonzero(np.diff(items, prepend=-1))  # rows are grouped by item

    def sum_per_item(values):
        return np.add.reduceat(values, starts)

    post, neg_entropy = em._e_step(log_conf, log_prior, cells, np.empty((k, bucket.n_items)), sum_per_item)
    return post, neg_entropy, items, cells


def _bucket_stats(data: _Encoded, bucket: _Bucket, log_conf, log_prior) -> _PassStats:
    post, neg_entropy, items, cells = _posteriors(data, bucket, log_conf, log_prior)
    counts = em._confusion_counts(post, items, cells, len(data.annotators))
    votes = np.bincount(items, minlength=bucket.n_items).astype(np.float64)
    return _PassStats(counts, post.sum(axis=1), post @ votes, neg_entropy)


def _in_order(function, arguments, threads: int) -> Iterator:
    """``map(function, arguments)`` on ``threads`` threads with at most ``threads`` results pending (numpy's
    gathers and ufuncs release the GIL; memory stays at ``threads`` buckets)."""
    if threads <= 1:
        yield from map(function, arguments)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for argument in arguments:
            pending.append(pool.submit(function, argument))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pass(data: _Encoded, log_conf, log_prior, threads: int) -> _PassStats:
    """One sequential pass over the rows: every bucket's posteriors, summed into the next M-step's statistics."""
    k = len(data.classes)
    total = _PassStats(np.zeros((len(data.annotators), k, k)), np.zeros(k), np.zeros(k), 0.0)
    for stats in _in_order(lambda b: _bucket_stats(data, b, log_conf, log_prior), data.buckets, threads):
        total.add(stats)
    return total


def _fit(data: _Encoded, max_iter: int, tol: float, shrinkage: float, threads: int):
    """aggregation._fit's EM, one pass per iteration. Returns the (log confusion, log prior) the final posteriors
    come from, and the fitted model."""
    start = _pass(data, None, None, threads)
    n_items = data.n_items
    priors = start.prior_sum / n_items
    counts, conf, log_conf = em._normalise(start.counts, data.observed, shrinkage)
    loss, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):  # noqa: B007 -- `it` is the iteration count reported after the loop
        log_prior = np.log(np.maximum(priors, em._EPS))
        used = (log_conf, log_prior)
        stats = _pass(data, log_conf, log_prior, threads)
        priors = stats.prior_sum / n_items
        counts, conf, log_conf = em._normalise(stats.counts, data.observed, shrinkage)
        elbo = np.sum(counts * log_conf) + np.log(np.maximum(priors, em._EPS)) @ stats.post_votes - stats.neg_entropy
        new_loss, previous = float(elbo) / data.n_rows, loss
        loss = new_loss
        if new_loss - previous < tol:
            converged = True
            break
    return used, conf, priors, it, converged, loss


class _Output:
    """Streams (item_id, label, confidence, n_votes) batches to Parquet, or CSV (a path or an open text file)."""

    def __init__(self, out) -> None:
        self.out, self.writer, self.header = out, None, True
        self.parquet = isinstance(out, (str, Path)) and str(out).endswith(".parquet")

    def write(self, frame: pl.DataFrame) -> None:
        if self.parquet:
            import pyarrow.parquet as pq

            table = frame.to_arrow()
            if self.writer is None:
                self.writer = pq.ParquetWriter(str(self.out), table.schema)
            self.writer.write_table(table)
            return
        if self.writer is None:
            self.writer = open(self.out, "w", newline="") if isinstance(self.out, (str, Path)) else self.out
        frame.write_csv(self.writer, include_header=self.header)
        self.header = False

    def close(self) -> None:
        if self.writer is not None and self.writer is not self.out:
            self.writer.close()


def _write_output(data: _Encoded, out, log_conf, log_prior, method: str, seed: int, threads: int) -> None:
    classes = data.classes
    k = len(classes)

    def labelled(index: int) -> tuple[np.ndarray, np.ndarray]:
        bucket = data.buckets[index]
        post, _, items, cells = _posteriors(data, bucket, log_conf, log_prior)
        if method != "majority":
            return post, post.argmax(axis=0)
        votes = em._vote_counts(items, cells % k, bucket.n_items, k)
        jitter = np.random.default_rng([seed, index]).random(votes.shape)  # < 1: reorders tied counts only
        return post, (votes + 0.5 * jitter).argmax(axis=0)

    output = _Output(out)
    try:
        results = _in_order(labelled, range(len(data.buckets)), threads)
        for (post, chosen), ids in zip(results, data.item_ids(), strict=True):
            output.write(pl.DataFrame({
                "item_id": pl.from_arrow(ids.column("item_id")),
                "label": classes.gather(chosen),
                "confidence": np.take_along_axis(post, chosen[None, :], axis=0)[0],
                "n_votes": pl.from_arrow(ids.column("n_votes")),
            }))
    finally:
        output.close()


def aggregate_batches(batches, out, *, n_rows_hint: int, source: str = "input", method: str = "dawid-skene",
                      max_iter: int = 100, tol: float = 1e-5, shrinkage: float = 0.0, seed: int = 0,
                      batch_rows: int = 1_000_000, workdir: Path | str | None = None,
                      threads: int | None = None) -> OutOfCoreResult:
    """Aggregate (item_id, annotator_id, label) record batches into ``out`` (a .parquet path, another path for CSV,
    or an open text file for CSV). ``n_rows_hint`` (the number of rows, or an upper bound) sizes the buckets so
    that each holds about ``batch_rows`` rows; scratch files go to a temporary directory under ``workdir``. EM passes
    run ``threads`` buckets at a time (default: the CPU count, at most 4)."""
    threads = threads or min(os.cpu_count() or 1, 4)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "majority":
        em._check_options(max_iter, tol, shrinkage)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = _MAX_BUCKETS if open_files == resource.RLIM_INFINITY else min(_MAX_BUCKETS, max(open_files - 64, 16))
    n_buckets = int(min(max(np.ceil(n_rows_hint * _SLACK / batch_rows), 1), limit))
    with tempfile.TemporaryDirectory(prefix="rlhf-aggregate-", dir=workdir) as scratch:
        scratch = Path(scratch)
        clock = [time.perf_counter()]

        def lap() -> float:
            clock.append(time.perf_counter())
            return clock[-1] - clock[-2]

        parts = _partition(batches, source, n_buckets, scratch)
        stages = {"partition_s": lap()}
        data = _encode(*parts, scratch)
        stages["encode_s"] = lap()
        k = len(data.classes)
        if method == "majority":
            used, conf, n_iter, converged, loss = (None, None), None, 0, True, float("nan")
            priors = _pass(data, None, None, threads).prior_sum / data.n_items
        else:
            used, conf, priors, n_iter, converged, loss = _fit(data, max_iter, tol, shrinkage, threads)
        stages["em_s"] = lap()
        _write_output(data, out, *used, method, seed, threads)
        stages["output_s"] = lap()
        summary = AggregationSummary(n_items=data.n_items, n_annotators=len(data.annotators), n_rows=data.n_rows,
                                     n_classes=k, classes=tuple(data.classes.to_list()), method=method,
                                     n_iter=n_iter, converged=converged)
        return OutOfCoreResult(summary, conf, priors, data.annotators.to_list(), loss, stages)


def aggregate_parquet(source: Path | str, out, *, batch_rows: int = 1_000_000, **kwargs) -> OutOfCoreResult:
    """aggregate_batches over a Parquet file or directory, read ``batch_rows`` rows at a time."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    dataset = open_parquet(source)
    return aggregate_batches(read_batches(dataset, batch_rows), out, n_rows_hint=dataset.count_rows(),
                             source=str(source), batch_rows=batch_rows, **kwargs)
