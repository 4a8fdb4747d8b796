"""The drift sensor's decision, without the sensor: served rows fed window by window against a version's stored
reference; the persistence rule, the state the correlation sensor reads (drift_ok) and what is kept between ticks.
Small synthetic references (windows of 50, 10 null windows) keep it well under a second or two."""

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from rlhf_assets.automation.drift_state import drift_ok, read_state
from rlhf_assets.automation.drift_watch import feed, store_reference
from rlhf_assets.evaluation.drift import DriftSettings, Sample
from rlhf_assets.serving.log import LOG_SCHEMA
from rlhf_assets.storage import Storage

SMALL = DriftSettings(window=50, min_window=10, pair_window=10, null_windows=10, k=4.0, persist_k=2, persist_n=3)
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def served(rng, artifact_id: str, n: int, start: int = 0, shift: float = 0.0) -> pl.DataFrame:
    """n served items: compared pairs (a and b rows share a prompt), scores ~ N(shift, 1)."""
    rows = {"time": [T0 + timedelta(seconds=start + i) for i in range(n)], "artifact_id": [artifact_id] * n,
            "release": ["r1"] * n, "alias": ["production"] * n,
            "side": ["a" if i % 2 == 0 else "b" for i in range(n)],
            "prompt_sha256": [f"p{(start + i) // 2}" for i in range(n)],
            "score": rng.normal(shift, 1, n).tolist(),
            "p_a": (1 / (1 + np.exp(-rng.normal(0, 1, n)))).tolist(),
            "embedding": rng.normal(0, 1, (n, 32)).astype(np.float32).tolist()}
    frame = pl.DataFrame(rows, schema_overrides={"embedding": pl.Array(pl.Float32, 32)})
    return frame.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in LOG_SCHEMA.items() if c not in rows)


@pytest.fixture(scope="module")
def calibrated_root(tmp_path_factory):
    """A root holding rm1's release reference, calibrated once for the module (each test works on a copy)."""
    root = tmp_path_factory.mktemp("drift") / "root"
    rng = np.random.default_rng(3)
    n = 400
    store_reference(Storage(root), "rm1", Sample(rng.normal(0, 1, n), 1 / (1 + np.exp(-rng.normal(0, 1, n // 2))),
                                                 rng.normal(0, 1, (n, 32)), np.arange(n) // 2), SMALL)
    return root


@pytest.fixture
def store(calibrated_root, tmp_path):
    shutil.copytree(calibrated_root, tmp_path / "root")
    return Storage(tmp_path / "root")


def test_a_version_without_a_reference_is_reported_and_its_rows_not_kept(store):
    windows, missing = feed(store, served(np.random.default_rng(0), "unknown", 120), SMALL, reference_windows=2)
    assert (windows, missing) == ([], ["unknown"])
    assert "unknown" not in read_state(store)
    assert feed(store, served(np.random.default_rng(0), "rm1", 0).head(0), SMALL) == ([], [])
    # in one batch with a version that has one (its rows served later): that version is still checked
    rows = pl.concat([served(np.random.default_rng(0), "unknown", 60), served(np.random.default_rng(1), "rm1", 60,
                                                                            start=100)])
    windows, missing = feed(store, rows, SMALL, reference_windows=2)
    assert missing == ["unknown"] and [w.artifact_id for w in windows] == ["rm1"]


def test_windows_of_exactly_the_calibrated_size_the_rest_waits(store):
    rng = np.random.default_rng(1)
    windows, _ = feed(store, served(rng, "rm1", 49), SMALL, reference_windows=2)
    assert windows == [] and read_state(store)["rm1"]["windows"] == 0
    windows, _ = feed(store, served(rng, "rm1", 1, start=49), SMALL, reference_windows=2)  # the 50th row
    assert len(windows) == 1 and windows[0].collected == 50


def test_first_windows_become_the_production_reference_then_a_steady_version_is_ok(store):
    rng = np.random.default_rng(2)
    windows, _ = feed(store, served(rng, "rm1", 100), SMALL, reference_windows=2)
    assert [w.result for w in windows] == [None, None]  # collected, not checked
    assert drift_ok(read_state(store), 3) == {"rm1": False}  # not checked yet: no graduation evidence
    windows, _ = feed(store, served(rng, "rm1", 150, start=100), SMALL, reference_windows=2)
    assert len(windows) == 3 and all(w.result is not None for w in windows)
    assert not any(w.persistent for w in windows)
    assert drift_ok(read_state(store), 3) == {"rm1": True}
    assert read_state(store)["rm1"]["phase"] == "monitoring"


def test_a_persistent_shift_raises_the_alarm_and_blocks_graduation(store):
    rng = np.random.default_rng(4)
    feed(store, served(rng, "rm1", 100), SMALL, reference_windows=2)
    first, _ = feed(store, served(rng, "rm1", 50, start=100, shift=3.0), SMALL, reference_windows=2)
    assert first[0].result.alarm and not first[0].persistent  # one window of 2 needed: not yet
    assert drift_ok(read_state(store), 1) == {"rm1": True}
    second, _ = feed(store, served(rng, "rm1", 50, start=150, shift=3.0), SMALL, reference_windows=2)  # next tick
    assert second[0].persistent and second[0].alias == "production" and second[0].release == "r1"
    assert read_state(store)["rm1"]["alarm"] is True
    assert drift_ok(read_state(store), 1) == {"rm1": False}
