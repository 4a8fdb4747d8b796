"""The aggregation benchmark (bench/aggregation.py): its crowd generator, and a quick run of every method."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

aggregation_bench = pytest.importorskip("bench.aggregation")
crowd = pytest.importorskip("bench.crowd")


@pytest.mark.slow
def test_quick_benchmark_runs_every_method():
    pytest.importorskip("crowdkit")
    result = aggregation_bench.main(**aggregation_bench._parse(["--quick"]))  # what `--quick` runs
    runs = result["runs"]
    assert [r["method"] for r in runs] == ["ours out of core", "crowd-kit", "ours", "ours out of core"]
    assert runs[0]["rows"] == result["rows"] > runs[1]["rows"] == runs[2]["rows"] == runs[3]["rows"] > 0
    for run in runs:
        assert run["n_iter"] == result["n_iter"] == 20
        assert run["wall_s"] > 0 and run["maxrss_mib"] > 0
        assert 0.85 < run["accuracy"] <= 1.0
    assert runs[1]["peak_mib"] > 0 and runs[2]["peak_mib"] > 0
    assert result["agreement_out_of_core_vs_in_memory"] >= 0.999
    assert abs(runs[2]["accuracy"] - runs[1]["accuracy"]) <= 0.01
    assert {"speedup", "memory_ratio", "accuracy_diff"} <= set(result)


def test_crowd_is_streamed_in_whole_items_with_recoverable_truth(tmp_path):
    made = crowd.write_crowd(tmp_path / "crowd.parquet", 3_000, chunk_rows=800, seed=1)
    source = pq.ParquetFile(made.path)
    assert source.num_row_groups == len(made.chunk_items) >= 3  # one row group per chunk
    frame = pl.read_parquet(made.path)
    assert frame.columns == ["item_id", "annotator_id", "label"] and frame.height == made.rows <= 3_000
    assert set(frame["label"]) <= set(crowd.CLASSES)
    votes = frame.group_by("item_id").len()["len"]
    assert votes.min() >= 3 and votes.max() <= 5 and len(votes) == made.items
    assert not frame.select(pl.struct("item_id", "annotator_id").is_duplicated().any()).item()
    first = pl.from_arrow(source.read_row_group(0))["item_id"].unique()
    assert not first.is_in(pl.from_arrow(source.read_row_group(1))["item_id"].unique().implode()).any()
    index = crowd.item_index(frame["item_id"])
    assert np.array_equal(crowd.item_index(crowd.item_ids(np.arange(made.items))), np.arange(made.items))
    assert index.min() == 0 and index.max() == made.items - 1
    truth = np.load(made.truth_path)
    ids = frame["item_id"].unique()
    perfect = pl.DataFrame({"item_id": ids, "label": np.array(crowd.CLASSES)[truth[crowd.item_index(ids)]]})
    perfect.write_parquet(tmp_path / "perfect.parquet")
    assert crowd.accuracy(tmp_path / "perfect.parquet", made.truth_path) == (1.0, made.items)
    # the annotators' answers carry the truth, better than chance but not perfectly
    right = truth[index] == frame["label"].replace_strict({c: i for i, c in enumerate(crowd.CLASSES)}).to_numpy()
    assert 0.6 < right.mean() < 0.95
