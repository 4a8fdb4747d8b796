"""`rlhf aggregate` through the real console entry point."""

import subprocess
import sys

import numpy as np
import polars as pl
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "rlhf_assets.cli", "aggregate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def crowd(tmp_path):
    """60 items, 5 annotators: three reliable, two always answer 'cat'."""
    rng = np.random.default_rng(0)
    truth = {f"item-{i}": ("cat", "dog", "bird")[i % 3] for i in range(60)}
    rows = []
    for item, label in truth.items():
        for worker in ("good-1", "good-2", "good-3"):
            rows.append((item, worker, label if rng.random() < 0.9 else "bird"))
        rows += [(item, "lazy-1", "cat"), (item, "lazy-2", "cat")]
    frame = pl.DataFrame(rows, schema=["item_id", "annotator_id", "label"], orient="row")
    return frame, truth


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet", "jsonl"])
def test_formats_and_dawid_skene_beats_lazy_annotators(tmp_path, crowd, suffix):
    frame, truth = crowd
    src = tmp_path / f"labels.{suffix}"
    {"csv": lambda p: frame.write_csv(p), "tsv": lambda p: frame.write_csv(p, separator="\t"),
     "parquet": frame.write_parquet, "jsonl": frame.write_ndjson}[suffix](src)
    out = tmp_path / "out.csv"
    proc = run(src, "--method", "dawid-skene", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "60 items, 5 annotators" in proc.stderr and "iterations" in proc.stderr
    result = pl.read_csv(out)
    assert result.columns == ["item_id", "label", "confidence", "n_votes"]
    assert result.height == 60 and (result["n_votes"] == 5).all()
    accuracy = np.mean([truth[i] == lab for i, lab in zip(result["item_id"], result["label"])])
    assert accuracy >= 0.95
    assert result["confidence"].min() > 0.3 and result["confidence"].max() <= 1.0


def test_majority_to_parquet_and_stdout(tmp_path, crowd):
    frame, _ = crowd
    src = tmp_path / "labels.csv"
    frame.write_csv(src)
    out = tmp_path / "out.parquet"
    proc = run(src, "--method", "majority", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert pl.read_parquet(out).height == 60
    stdout = run(src, "--method", "majority")
    assert stdout.returncode == 0 and stdout.stdout.startswith("item_id,label,confidence,n_votes")


def test_bad_inputs_give_clear_errors(tmp_path):
    missing_col = tmp_path / "bad.csv"
    missing_col.write_text("item,annotator_id,label\n1,a,x\n")
    cases = {
        tmp_path / "nope.csv": "no such file",
        missing_col: "missing column(s) item_id",
        tmp_path / "labels.xlsx": "unsupported extension",
    }
    (tmp_path / "labels.xlsx").write_text("x")
    for path, message in cases.items():
        proc = run(path)
        assert proc.returncode == 2, (path, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
    proc = run(missing_col, "--method", "median")
    assert proc.returncode == 2 and "--method" in proc.stderr
