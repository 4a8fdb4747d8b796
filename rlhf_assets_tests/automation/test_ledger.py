"""The retrain cooldown ledger and the drift state the correlation sensor reads before graduating a canary."""

from datetime import UTC, datetime, timedelta

import pytest

from rlhf_assets.automation.drift_state import drift_ok, read_state, write_state
from rlhf_assets.automation.ledger import LEDGER, in_cooldown, read_ledger, record
from rlhf_assets.storage import Storage

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    return Storage(tmp_path / "root")


def test_empty_ledger_has_no_cooldown(store):
    assert read_ledger(store) == {"retrains": [], "moves": []}
    assert in_cooldown(store, 3600, now=T0) is None


def test_a_retrain_starts_a_cooldown_that_ends_exactly_at_its_length(store):
    record(store, "retrains", {"release": "r5", "trigger": "drift"}, now=T0)
    assert in_cooldown(store, 3600, now=T0)["release"] == "r5"
    assert in_cooldown(store, 3600, now=T0 + timedelta(seconds=3599))["release"] == "r5"
    assert in_cooldown(store, 3600, now=T0 + timedelta(seconds=3600)) is None  # a new episode may retrain
    assert in_cooldown(store, 0, now=T0) is None  # cooldown 0: never


def test_the_newest_retrain_decides_and_moves_do_not_count(store):
    record(store, "retrains", {"release": "r1"}, now=T0)
    record(store, "retrains", {"release": "r2"}, now=T0 + timedelta(hours=5))
    record(store, "moves", {"release": "r3", "kind": "rollback"}, now=T0 + timedelta(hours=9))
    assert in_cooldown(store, 6 * 3600, now=T0 + timedelta(hours=10))["release"] == "r2"
    assert in_cooldown(store, 6 * 3600, now=T0 + timedelta(hours=11, minutes=1)) is None


def test_moves_alone_start_no_cooldown(store):
    record(store, "moves", {"release": "r3", "kind": "graduate"}, now=T0)
    assert in_cooldown(store, 3600, now=T0) is None


def test_record_appends_with_its_time_and_survives_a_reread(store):
    first = record(store, "retrains", {"release": "r1", "evidence": {"x": 1}}, now=T0)
    assert first == {"time": T0.isoformat(), "release": "r1", "evidence": {"x": 1}}
    record(store, "moves", {"release": "r2"}, now=T0)
    ledger = read_ledger(Storage(store.uri))  # another sensor, or a restarted daemon
    assert ledger["retrains"] == [first] and [m["release"] for m in ledger["moves"]] == ["r2"]
    assert store.path(*LEDGER).exists()


def test_drift_ok_needs_enough_windows_and_no_standing_alarm(store):
    assert read_state(store) == {}
    write_state(store, {"a": {"windows": 3, "alarm": False}, "b": {"windows": 2, "alarm": False},
                        "c": {"windows": 9, "alarm": True}, "d": {}})
    assert drift_ok(read_state(store), 3) == {"a": True, "b": False, "c": False, "d": False}
    assert drift_ok(read_state(store), 0)["d"] is True
    assert drift_ok({}, 1) == {}
