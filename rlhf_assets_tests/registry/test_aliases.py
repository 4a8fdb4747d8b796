"""Aliases and their append-only history: promote / canary / rollback, validation, crash consistency, and
concurrent writers (real processes on a local root, threads against moto S3)."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading

import pytest

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.storage import Storage


def arts(release: str) -> dict[str, str]:
    """Fake artifact ids, distinct per release."""
    return {name: f"{release}-{name}".ljust(64, "0") for name in ("reward_model", "calibration", "policy")}


def promote(reg: Registry, release: str, action: str = "promote", **kw):
    return reg.set_alias("production", release, arts(release), action=action, reason=kw.pop("reason", "gates ok"),
                         actor=kw.pop("actor", "deployment_decision"), **kw)


def assert_consistent(reg: Registry, n: int):
    """Seqs 1..n, each entry's from_release is the previous holder, and the cache file equals the replay."""
    history = reg.history()
    assert [e["seq"] for e in history] == list(range(1, n + 1))
    holders = {"production": None, "canary": None}
    for e in history:
        assert e["from_release"] == holders[e["alias"]], e
        holders[e["alias"]] = e["release"]
    cache = json.loads(reg.cache_path.read_bytes())
    assert cache["history_seq"] == n
    assert {a: (cache[a] or {}).get("release") for a in holders} == holders
    assert cache["production"] == reg.aliases()["production"]
    return history


# the lifecycle ----------------------------------------------------------------------------------------------


def test_promote_promote_rollback(tmp_path):
    reg = Registry(Storage(tmp_path / "root"))
    assert reg.aliases() == {"production": None, "canary": None} and reg.history() == []
    e1 = promote(reg, "r20261126-2130")
    e2 = promote(reg, "r20261127-0900")
    e3 = promote(reg, "r20261126-2130", action="rollback", reason="human-RM correlation dropped", actor="alice")
    assert (e1["seq"], e2["seq"], e3["seq"]) == (1, 2, 3)

    prod = reg.current("production")
    assert prod["release"] == "r20261126-2130" and prod["artifacts"] == arts("r20261126-2130")
    assert prod["history_seq"] == 3 and prod["since"] == e3["time"] and "share" not in prod
    history = assert_consistent(reg, 3)
    assert [(e["action"], e["release"], e["from_release"]) for e in history] == [
        ("promote", "r20261126-2130", None),
        ("promote", "r20261127-0900", "r20261126-2130"),
        ("rollback", "r20261126-2130", "r20261127-0900")]
    assert history[1]["artifacts"] == arts("r20261127-0900")  # r2 is still on record after the rollback
    assert history[2]["actor"] == "alice" and history[2]["reason"] == "human-RM correlation dropped"
    assert history[2]["time"].endswith("Z") and history[0]["time"] <= history[2]["time"]
    files = sorted(os.listdir(tmp_path / "root" / "registry" / "history"))
    assert files == ["00000001.json", "00000002.json", "00000003.json"]


def test_canary_then_clear(tmp_path):
    reg = Registry(Storage(tmp_path / "root"))
    promote(reg, "r1")
    e = reg.set_alias("canary", "r2", arts("r2"), action="canary", reason="uplift CI straddles 0", actor="gate",
                      share=0.1)
    assert e["share"] == 0.1
    assert reg.current("canary")["share"] == 0.1 and reg.current("production")["release"] == "r1"
    cleared = reg.clear_alias("canary", reason="canary finished", actor="bob")
    assert cleared["action"] == "clear" and cleared["from_release"] == "r2" and cleared["release"] is None
    assert reg.current("canary") is None
    assert reg.clear_alias("canary", reason="again", actor="bob") is None  # nothing to clear: no entry
    assert_consistent(reg, 3)


@pytest.mark.parametrize("share", [None, 0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_canary_share_must_be_in_0_1(tmp_path, share):
    reg = Registry(Storage(tmp_path / "root"))
    with pytest.raises(ValueError, match="share"):
        reg.set_alias("canary", "r1", arts("r1"), action="canary", reason="x", actor="y", share=share)
    assert reg.history() == []


def test_share_1_is_allowed_and_production_takes_none(tmp_path):
    reg = Registry(Storage(tmp_path / "root"))
    reg.set_alias("canary", "r1", arts("r1"), action="canary", reason="x", actor="y", share=1)
    with pytest.raises(ValueError, match="only the canary"):
        promote(reg, "r1", share=0.5)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.set_alias("staging", "r1", arts("r1"), action="promote", reason="x", actor="y"), "unknown alias"),
    (lambda r: r.current("prod"), "unknown alias"),
    (lambda r: r.clear_alias("latest", reason="x", actor="y"), "unknown alias"),
    (lambda r: promote(r, "r1", action="clear"), "action"),
    (lambda r: promote(r, "r1", action="canary"), "canary alias"),
    (lambda r: promote(r, "r1", reason=" "), "reason"),
    (lambda r: promote(r, "r1", actor=""), "actor"),
    (lambda r: promote(r, "../r1"), "release key"),
    (lambda r: r.set_alias("production", "r1", {"policy": 3}, action="promote", reason="x", actor="y"), "artifacts"),
])
def test_invalid_changes_are_refused(tmp_path, call, message):
    reg = Registry(Storage(tmp_path / "root"))
    with pytest.raises(ValueError, match=message):
        call(reg)
    assert reg.history() == []


# crash consistency ------------------------------------------------------------------------------------------


def test_history_is_the_source_of_truth_when_the_cache_lags(tmp_path, monkeypatch):
    reg = Registry(Storage(tmp_path / "root"))
    promote(reg, "r1")
    promote(reg, "r2")
    # Crash after the history entry is written but before aliases.json is: the cache stays at seq 2.
    monkeypatch.setattr(Registry, "_write_cache", lambda self, state, seq: None)
    promote(reg, "r1", action="rollback", reason="bad canary metrics", actor="sensor")
    monkeypatch.undo()
    assert json.loads(reg.cache_path.read_bytes())["history_seq"] == 2
    assert json.loads(reg.cache_path.read_bytes())["production"]["release"] == "r2"
    assert reg.current("production")["release"] == "r1"  # replayed from the history
    assert reg.current("production")["history_seq"] == 3
    # The next writer sees the right previous holder and heals the cache.
    e = reg.set_alias("canary", "r3", arts("r3"), action="canary", reason="x", actor="y", share=0.5)
    assert e["seq"] == 4
    assert_consistent(reg, 4)


def test_missing_or_bogus_cache_is_rebuilt_from_history(tmp_path):
    reg = Registry(Storage(tmp_path / "root"))
    promote(reg, "r1")
    promote(reg, "r2")
    expected = reg.aliases()
    os.unlink(reg.cache_path)
    assert reg.aliases() == expected
    reg.cache_path.write_text(json.dumps({"history_seq": 99, "production": None, "canary": None}))
    assert reg.aliases() == expected  # a cache ahead of the history is not believed
    reg.cache_path.write_text("{half a fi")
    assert reg.aliases() == expected


# concurrency: local root, real processes --------------------------------------------------------------------


def _promote_in_process(root: str, release: str, barrier) -> None:
    reg = Registry(Storage(root))
    barrier.wait(timeout=60)
    promote(reg, release)


def test_concurrent_processes_leave_a_gap_free_history(tmp_path):
    n = 8
    root = str(tmp_path / "root")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_promote_in_process, args=(root, f"r{i}", barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * n
    reg = Registry(Storage(root))
    history = assert_consistent(reg, n)
    assert sorted(e["release"] for e in history) == sorted(f"r{i}" for i in range(n))
    assert reg.current("production")["release"] == history[-1]["release"]
    leftovers = [f for f in os.listdir(os.path.join(root, "registry", "history")) if f.startswith(".")]
    assert leftovers == []  # no temporary files left behind


# s3 (moto) --------------------------------------------------------------------------------------------------


@pytest.fixture
def atomic_moto_puts(monkeypatch):
    """moto checks If-None-Match / If-Match and then stores, without a lock between the two, so two racing
    threads could in principle both pass. Real S3 makes the conditional PUT atomic; make moto do the same."""
    from moto.s3.responses import S3Response

    original, lock = S3Response.put_object, threading.Lock()

    def put_object(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", put_object)


def test_s3_lifecycle_and_lagging_cache(s3_storage, monkeypatch):
    storage, client, bucket = s3_storage
    reg = Registry(storage)
    promote(reg, "r1")
    promote(reg, "r2")
    promote(reg, "r1", action="rollback", reason="x", actor="alice")
    history = assert_consistent(reg, 3)
    assert [e["from_release"] for e in history] == [None, "r1", "r2"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="prefix/registry/")["Contents"])
    assert keys == ["prefix/registry/aliases.json"] + [f"prefix/registry/history/0000000{i}.json" for i in (1, 2, 3)]

    monkeypatch.setattr(Registry, "_write_cache", lambda self, state, seq: None)  # crash before the cache write
    promote(reg, "r3")
    monkeypatch.undo()
    assert reg.current("production")["release"] == "r3"
    reg.clear_alias("canary", reason="x", actor="y")  # nothing to clear: no entry, cache untouched
    reg.set_alias("canary", "r4", arts("r4"), action="canary", reason="x", actor="y", share=0.25)
    assert_consistent(reg, 5)


def test_s3_create_is_exclusive_but_recognises_its_own_lost_response(s3_storage):
    storage, _, _ = s3_storage
    reg = Registry(storage)
    entry = promote(reg, "r1")
    assert reg._create_entry(entry)  # already there with our id: a retried PUT that had succeeded
    assert not reg._create_entry(dict(entry, id="someone-else"))
    assert reg.history() == [entry]


def test_s3_concurrent_writers(s3_storage, atomic_moto_puts):
    storage, _, _ = s3_storage
    n = 8
    barrier, errors = threading.Barrier(n), []

    def worker(i):
        reg = Registry(storage)
        barrier.wait(timeout=60)
        try:
            promote(reg, f"r{i}")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    reg = Registry(storage)
    history = assert_consistent(reg, n)
    assert sorted(e["release"] for e in history) == sorted(f"r{i}" for i in range(n))
