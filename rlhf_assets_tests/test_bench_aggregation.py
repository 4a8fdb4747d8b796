"""Smoke test of the aggregation benchmark (bench/aggregation.py) in quick mode: both methods run, same accuracy."""

from __future__ import annotations

import pytest

pytest.importorskip("crowdkit")
aggregation_bench = pytest.importorskip("bench.aggregation")


@pytest.mark.slow
def test_quick_benchmark_runs_both_methods():
    # what `python -m bench.aggregation --quick` runs
    result = aggregation_bench.main(rows=50_000, n_items=10_000, n_annotators=200, n_iter=20, big_rows=0,
                                    skip_peer=False, repeats=1)
    runs = {run["method"]: run for run in result["runs"]}
    assert set(runs) == {"crowd-kit", "ours"}
    for run in runs.values():
        assert run["rows"] == 50_000 and run["n_iter"] == result["n_iter"] == 20
        assert run["wall_s"] > 0 and run["peak_mib"] > 0
        assert 0.8 < run["accuracy"] <= 1.0
    assert abs(runs["ours"]["accuracy"] - runs["crowd-kit"]["accuracy"]) <= 0.01
    assert {"speedup", "memory_ratio", "accuracy_diff"} <= set(result)


def test_make_task_shape():
    frame, truth = aggregation_bench.make_task(rows=1_000, n_items=200, n_annotators=20)
    assert list(frame.columns) == ["task", "worker", "label"] and len(frame) == 1_000 and len(truth) == 200
    assert not frame.duplicated(["task", "worker"]).any()
    assert set(frame["label"]) <= {"a", "b", "tie"}
