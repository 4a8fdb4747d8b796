"""Out-of-core Dawid–Skene: the in-memory path's labels on data split into many row groups and buckets, bad input
accounted for row by row, one batch in memory at a time, and `rlhf aggregate` choosing the path by size."""

from __future__ import annotations

import subprocess
import sys
import weakref

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from rlhf_assets.preference import aggregation_out_of_core as ooc
from rlhf_assets.preference.aggregate_file import AggregateInputError, aggregate_to
from rlhf_assets.preference.aggregation import aggregate_table

CLASSES = np.array(["a", "b", "tie"])


def _crowd(n_items=12_000, n_workers=120, seed=0) -> tuple[pl.DataFrame, np.ndarray]:
    """3-5 labels per item by annotators of accuracy 0.4-0.95 (some biased towards "tie"), rows shuffled so that an
    item's labels land in different row groups."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, n_items, p=[0.45, 0.45, 0.1])
    accuracy = rng.uniform(0.4, 0.95, n_workers)
    tie_happy = rng.random(n_workers) < 0.2
    votes = rng.integers(3, 6, n_items)
    items = np.repeat(np.arange(n_items), votes)
    workers = rng.integers(0, n_workers, len(items))
    wrong = np.where(tie_happy[workers], 2, (truth[items] + rng.integers(1, 3, len(items))) % 3)
    labels = np.where(rng.random(len(items)) < accuracy[workers], truth[items], wrong)
    order = rng.permutation(len(items))
    frame = pl.DataFrame({"item_id": pl.Series(items[order]).cast(pl.String).str.zfill(6),
                          "annotator_id": "w" + pl.Series(workers[order]).cast(pl.String),
                          "label": pl.Series(CLASSES[labels[order]])})
    return frame, truth


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    frame, truth = _crowd()
    path = tmp_path_factory.mktemp("crowd") / "labels.parquet"
    frame.write_parquet(path, row_group_size=1_000)  # ~50 row groups
    return frame, truth, path


@pytest.mark.parametrize("shrinkage", [0.0, 2.0])
def test_same_labels_as_in_memory_across_many_row_groups_and_buckets(crowd, tmp_path, shrinkage):
    frame, truth, path = crowd
    assert pq.ParquetFile(path).num_row_groups >= 40
    expected, summary = aggregate_table(frame["item_id"], frame["annotator_id"], frame["label"],
                                        shrinkage=shrinkage)
    out = tmp_path / "out.parquet"
    result = ooc.aggregate_parquet(path, out, batch_rows=1_500, shrinkage=shrinkage, threads=2)
    got = pl.read_parquet(out)
    assert got.columns == expected.columns and got.height == expected.height == got["item_id"].n_unique()
    assert result.summary == summary  # items, annotators, rows, classes, iterations, convergence
    joined = expected.join(got, on="item_id", suffix="_ooc")
    assert joined.height == expected.height
    assert (joined["label"] == joined["label_ooc"]).mean() >= 0.999
    assert (joined["n_votes"] == joined["n_votes_ooc"]).all()
    np.testing.assert_allclose(joined["confidence_ooc"], joined["confidence"], atol=1e-9)
    # and it is still Dawid–Skene: better than majority vote against the truth
    majority, _ = aggregate_table(frame["item_id"], frame["annotator_id"], frame["label"], method="majority")
    right = {name: float((pl.Series(CLASSES[truth]).gather(t["item_id"].cast(pl.Int64)) == t["label"]).mean())
             for name, t in (("ds", got), ("mv", majority))}
    assert right["ds"] > right["mv"] + 0.02


def test_majority_vote_out_of_core_matches_vote_shares(crowd, tmp_path):
    frame, _, path = crowd
    expected, _ = aggregate_table(frame["item_id"], frame["annotator_id"], frame["label"], method="majority")
    out = tmp_path / "out.csv"
    result = ooc.aggregate_parquet(path, out, method="majority", batch_rows=3_000)
    assert result.summary.method == "majority" and result.confusion is None
    joined = expected.join(pl.read_csv(out, schema_overrides={"item_id": pl.String}), on="item_id", suffix="_ooc")
    assert joined.height == expected.height
    np.testing.assert_allclose(joined["confidence_ooc"], joined["confidence"])
    untied = joined.filter(pl.col("confidence") > 0.5)  # a strict majority: no tie to break
    assert untied.height > 0.8 * joined.height and (untied["label"] == untied["label_ooc"]).all()


def test_grouping_survives_hash_collisions():
    """Equal hashes of different ids must not merge items: a key that collides all the time falls back to ids."""
    frame = pl.DataFrame({"item_id": ["ab", "cd", "ab", "ef", "cd", "ab"], "annotator_id": [0, 1, 2, 3, 4, 5],
                          "label": [0] * 6})
    grouped = ooc._group_by_item(frame, key=pl.col("item_id").str.len_bytes().cast(pl.UInt64))
    assert grouped["item_id"].to_list() == ["ab", "ab", "ab", "cd", "cd", "ef"]
    assert grouped["first"].to_list() == [True, False, False, True, False, True]


def test_reader_holds_one_batch_and_buckets_stay_near_batch_rows(crowd, tmp_path):
    frame, _, path = crowd
    batch_rows, sizes, refs, alive = 1_500, [], [], []

    def watched(batches):
        for batch in batches:
            # the consumer's loop variable still holds the previous batch; none before it may be alive
            alive.append(sum(ref() is not None for ref in refs[:-1]))
            refs.append(weakref.ref(batch))
            sizes.append(batch.num_rows)
            yield batch
            del batch

    dataset = ooc.open_parquet(path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    paths, annotators, labels, n_rows = ooc._partition(watched(ooc.read_batches(dataset, batch_rows)), "x",
                                                       buckets := int(np.ceil(frame.height * 1.25 / batch_rows)),
                                                       scratch)
    assert n_rows == frame.height == sum(sizes)
    assert max(sizes) <= batch_rows  # the reader never materialises more than batch_rows rows
    assert not any(alive)  # and nothing keeps an earlier batch once the next is read
    data = ooc._encode(paths, annotators, labels, n_rows, scratch)
    assert len(data.buckets) == buckets
    assert max(b.n_rows for b in data.buckets) <= 1.25 * batch_rows  # EM holds one bucket per thread
    assert sum(b.n_rows for b in data.buckets) == frame.height
    assert (scratch / "items.i32").stat().st_size == (scratch / "cells.i32").stat().st_size == 4 * frame.height
    assert not list(scratch.glob("bucket-*"))  # each bucket file is deleted once encoded


def _write(tmp_path, name, frame, **kwargs):
    path = tmp_path / name
    frame.write_parquet(path, **kwargs)
    return path


def test_bad_input_names_the_problem_and_accounts_for_every_row(tmp_path):
    rows = pl.DataFrame({"item_id": [f"i{i}" for i in range(10)], "annotator_id": ["w1", "w2"] * 5,
                         "label": ["a", "b"] * 5})
    holes = rows.with_columns(
        pl.when(pl.int_range(10).is_in([2, 7])).then(None).otherwise(pl.col("item_id")).alias("item_id"),
        pl.when(pl.int_range(10) == 7).then(None).otherwise(pl.col("label")).alias("label"))
    cases = {
        "nulls.parquet": (holes, "2 of 10 row(s) have an empty item_id, annotator_id or label (nulls per column: "
                                 "item_id 2, label 1; first at row(s) 2, 7, 0-based); the other 8 rows are valid"),
        "missing.parquet": (rows.drop("label").rename({"item_id": "pair"}),
                            "missing column(s) item_id, label; found pair, annotator_id"),
        "one_class.parquet": (rows.with_columns(pl.lit("a").alias("label")), "only one distinct label"),
        "empty.parquet": (rows.head(0), "no rows"),
    }
    for name, (frame, message) in cases.items():
        path = _write(tmp_path, name, frame, row_group_size=3)  # nulls in two different row groups
        with pytest.raises(ooc.LabelInputError) as caught:
            ooc.aggregate_parquet(path, tmp_path / "out.parquet", batch_rows=4)
        assert message in str(caught.value), name
        assert not (tmp_path / "out.parquet").exists()
    with pytest.raises(ooc.LabelInputError, match="no such file"):
        ooc.aggregate_parquet(tmp_path / "absent.parquet", tmp_path / "out.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ooc.LabelInputError, match="cannot read as Parquet"):
        ooc.aggregate_parquet(tmp_path / "text.parquet", tmp_path / "out.parquet")
    with pytest.raises(ValueError, match="batch_rows"):
        ooc.aggregate_parquet(_write(tmp_path, "ok.parquet", rows), tmp_path / "out.parquet", batch_rows=0)


def test_aggregate_to_switches_on_size_or_flag(crowd, tmp_path):
    _, _, path = crowd
    size = path.stat().st_size
    for threshold, forced, expected in ((size - 1, None, True), (size + 1, None, False), (size + 1, True, True),
                                        (0, False, False)):
        summary, streamed = aggregate_to(path, tmp_path / "out.parquet", out_of_core=forced,
                                         out_of_core_bytes=threshold, batch_rows=5_000)
        assert streamed is expected and summary.n_rows == pl.scan_parquet(path).select(pl.len()).collect().item()
    csv = tmp_path / "labels.csv"
    csv.write_text("item_id,annotator_id,label\ni,w,a\n")
    with pytest.raises(AggregateInputError, match="out of core needs Parquet"):
        aggregate_to(csv, None, out_of_core=True)


def test_cli_on_a_directory_of_parquet_files(crowd, tmp_path):
    frame, _, _ = crowd
    folder = tmp_path / "labels"
    folder.mkdir()
    for index, part in enumerate(frame.iter_slices(20_000)):
        part.write_parquet(folder / f"part-{index}.parquet")
    out = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, "-m", "rlhf_assets.cli", "aggregate", str(folder), "--out", str(out),
                           "--batch-rows", "5000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{frame['item_id'].n_unique()} items" in proc.stderr and "out of core" in proc.stderr
    expected, _ = aggregate_table(frame["item_id"], frame["annotator_id"], frame["label"])
    got = pl.read_csv(out, schema_overrides={"item_id": pl.String})
    joined = expected.join(got, on="item_id", suffix="_ooc")
    assert joined.height == expected.height and (joined["label"] == joined["label_ooc"]).mean() >= 0.999
