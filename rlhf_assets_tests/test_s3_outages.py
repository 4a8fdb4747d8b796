"""An s3:// storage root rides out outages of the store (moto's S3 server on loopback, stopped and started again on
the same port inside the test): bounded retries with backoff and jitter, then a clear failure naming the path; no
partial artifact under its final name; the serving log keeps its rows and writes them all once the store is back."""

import threading
import time

import pytest

from rlhf_assets.automation.landing_watch import LandingState, scan
from rlhf_assets.automation.log_cursor import LogCursor, new_log_rows
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import MANIFEST, ArtifactNotFound, ArtifactStore
from rlhf_assets.serving.log import LOG_DIR, ServingLog, read_serving_log
from rlhf_assets.storage import Storage, StorageSettings, StorageUnavailable, with_retries
from rlhf_assets_tests.support import wait_until

FAST = StorageSettings(attempts=4, backoff_s=0.05, backoff_max_s=0.2, connect_timeout_s=1.0, read_timeout_s=5.0)


@pytest.fixture
def s3(moto_server, s3_storage):
    """(storage with a fast retry policy, boto3 client, bucket, the server) on a fresh bucket."""
    storage, client, bucket = s3_storage
    fast = Storage(storage.uri, {"endpoint_url": moto_server.endpoint}, policy=FAST)
    return fast, client, bucket, moto_server


def _keys(client, bucket):
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


# the policy ------------------------------------------------------------------------------------------------------
def test_retries_back_off_with_jitter_and_then_name_the_path():
    waits, calls = [], []

    def down():
        calls.append(1)
        raise ConnectionError("connection refused")

    policy = StorageSettings(attempts=5, backoff_s=0.1, backoff_max_s=0.3)
    with pytest.raises(StorageUnavailable, match=r"could not write s3://b/k\.bin: the store failed 5 time") as err:
        with_retries("write", "s3://b/k.bin", down, policy, sleep=waits.append)
    assert "ConnectionError: connection refused" in str(err.value) and len(calls) == 5
    caps = [0.1, 0.2, 0.3, 0.3]  # doubling, capped at backoff_max_s; each wait in [cap/2, cap]
    assert len(waits) == 4 and all(c / 2 <= w <= c for w, c in zip(waits, caps)), waits

    flaky = iter([TimeoutError("slow"), OSError("503 SlowDown"), b"ok"])

    def comes_back():
        item = next(flaky)
        if isinstance(item, Exception):
            raise item
        return item

    assert with_retries("read", "s3://b/k", comes_back, policy, sleep=waits.append) == b"ok"

    def missing():
        calls.append(1)
        raise FileNotFoundError("s3://b/nope")

    calls.clear()
    with pytest.raises(FileNotFoundError):  # a permanent answer is not retried
        with_retries("read", "s3://b/nope", missing, policy, sleep=waits.append)
    assert len(calls) == 1


def test_storage_settings_come_from_the_config_file(tmp_path, monkeypatch):
    path = tmp_path / "storage.json"
    path.write_text('{"attempts": 2, "backoff_s": 0.01}')
    monkeypatch.setenv("RLHF_STORAGE_CONFIG", str(path))
    assert Storage(str(tmp_path / "root")).policy == StorageSettings(attempts=2, backoff_s=0.01)
    path.write_text('{"attempts": 0}')
    with pytest.raises(ValueError, match="attempts"):
        Storage(str(tmp_path / "root"))


# writes against a stopped server --------------------------------------------------------------------------------
def test_a_write_during_an_outage_fails_clearly_and_succeeds_when_the_server_is_back(s3):
    storage, client, bucket, server = s3
    before = storage.path("tables", "t", "before.json")
    storage.write_json(before, {"n": 1})
    server.stop()
    target = storage.path("tables", "t", "during.json")
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"could not write s3://.*/tables/t/during\.json.* 4 time"):
        storage.write_json(target, {"n": 2})
    assert time.monotonic() - t0 < 10  # bounded
    # the server comes back while a write is retrying: the write succeeds
    restart = threading.Timer(0.1, server.start)
    restart.start()
    storage.write_json(target, {"n": 2})
    restart.join()
    assert storage.read_json(target) == {"n": 2} and storage.read_json(before) == {"n": 1}  # nothing lost


def test_an_artifact_upload_cut_by_an_outage_is_never_visible_and_the_next_put_commits_it(s3, tmp_path):
    storage, client, bucket, server = s3
    store = ArtifactStore(storage, cache_dir=tmp_path / "cache")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "weights.bin").write_bytes(b"old weights")
    old = store.put_dir(old_dir, kind="reward_model", manifest={"seed": 0})
    src = tmp_path / "new"
    (src / "tokenizer").mkdir(parents=True)
    for name in ("a.bin", "b.bin", "tokenizer/vocab.txt"):
        (src / name).write_bytes(name.encode() * 1000)

    uploads, put_file = [], Storage.put_file

    def stop_after_the_first_file(self, local, path):
        put_file(self, local, path)
        uploads.append(path.name)
        if len(uploads) == 1:
            server.stop()  # the store goes away in the middle of the upload

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "put_file", stop_after_the_first_file)
        with pytest.raises(StorageUnavailable, match=r"could not upload s3://.*/artifacts/sha256/[0-9a-f]{64}/"):
            store.put_dir(src, kind="reward_model", manifest={"seed": 1})
    assert uploads == ["a.bin"]
    server.start()
    keys = _keys(client, bucket)
    partial = {k for k in keys if k.endswith("/a.bin")}
    assert partial and not any(k.endswith(MANIFEST) and k.split("/")[-2] in str(partial) for k in keys)
    digest = next(iter(partial)).split("/")[-2]
    # readers do not see it: no manifest, no artifact
    assert not store.exists(digest) and [r.id for r in store.list()] == [old.id]
    with pytest.raises(ArtifactNotFound):
        store.resolve(digest)
    # the next put (the asset's retry) uploads it all and commits it; what was there before is intact
    ref = store.put_dir(src, kind="reward_model", manifest={"seed": 1})
    assert ref.id == digest and store.exists(digest) and store.verify(digest)
    assert {r.id for r in store.list()} == {old.id, digest} and store.verify(old.id)


def test_a_promotion_during_an_outage_fails_clearly_and_the_history_stays_whole(s3):
    storage, client, bucket, server = s3
    registry = Registry(storage)
    registry.set_alias("production", "r20250601-2359", {"reward_model": "a" * 64}, action="promote",
                       reason="first", actor="test")
    server.stop()
    with pytest.raises(StorageUnavailable, match=r"could not \w+ s3://.*/registry/"):
        registry.set_alias("production", "r20250602-2359", {"reward_model": "b" * 64}, action="promote",
                           reason="lost", actor="test")
    restart = threading.Timer(0.1, server.start)  # back while the next promotion is retrying
    restart.start()
    registry.set_alias("production", "r20250603-2359", {"reward_model": "c" * 64}, action="promote",
                       reason="second", actor="test")
    restart.join()
    assert [(e["seq"], e["reason"]) for e in registry.history()] == [(1, "first"), (2, "second")]
    assert registry.current("production")["release"] == "r20250603-2359"


# the serving log -------------------------------------------------------------------------------------------------
def _rows(start, n):
    from datetime import UTC, datetime

    return [{"time": datetime.now(UTC), "request_id": f"req-{i}", "item": 0, "endpoint": "score",
             "artifact_id": "a" * 64, "alias": "production", "score": float(i), "latency_ms": 1.0,
             "cache_hit": False, "embedding": [0.0] * 32} for i in range(start, start + n)]


def test_the_serving_log_buffers_through_an_outage_and_loses_nothing(s3):
    storage, client, bucket, server = s3
    outcomes = []
    log = ServingLog(storage, flush_rows=50, flush_s=0.1, buffer_rows=10_000,
                     on_outcome=lambda outcome, n: outcomes.append((outcome, n)))
    try:
        log.append(_rows(0, 30))
        wait_until(lambda: ("written", 30) in outcomes, poll_s=0.02)
        server.stop()
        log.append(_rows(30, 70))  # one full file and part of the next, while the store is down
        wait_until(lambda: any(o == "failed" for o, _ in outcomes), poll_s=0.02)
        log.append(_rows(100, 20))
        assert log.buffered == 90  # kept, not dropped
        server.start()
        wait_until(lambda: log.buffered == 0, 15, poll_s=0.02)
    finally:
        log.close()
    assert sum(n for o, n in outcomes if o == "written") == 120
    assert not any(o == "dropped" for o, _ in outcomes)
    back = read_serving_log(storage)
    assert sorted(back["request_id"]) == sorted(f"req-{i}" for i in range(120))  # rows in = rows out, once each
    rows, cursor = new_log_rows(storage, LogCursor())  # what the sensors read
    assert rows.height == 120
    again, _ = new_log_rows(storage, cursor)
    assert again.height == 0
    files = [k for k in _keys(client, bucket) if "/".join(LOG_DIR) in k]
    assert len(files) == len(log.files) >= 3


def test_rows_still_buffered_when_the_service_stops_during_an_outage_are_reported(s3, capsys):
    storage, client, bucket, server = s3
    log = ServingLog(storage, flush_rows=100, flush_s=3600, buffer_rows=1000)
    log.append(_rows(0, 7))
    server.stop()
    log.close()
    assert log.buffered == 7
    assert "serving log: 7 buffered row(s) could not be written at shutdown" in capsys.readouterr().err


def test_a_failed_log_file_is_retried_under_the_same_name(s3):
    """A PUT that landed but whose answer was lost must not write its rows twice: the retry reuses the name."""
    storage, client, bucket, server = s3
    outcomes, calls, write_bytes = [], [], Storage.write_bytes

    def lands_but_answer_lost(self, path, data):
        write_bytes(self, path, data)
        calls.append(path.name)
        if len(calls) == 1:
            raise StorageUnavailable(f"could not write {path}: answer lost")
        return "ok"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "write_bytes", lands_but_answer_lost)
        log = ServingLog(storage, flush_rows=100, flush_s=0.05, buffer_rows=1000,
                         on_outcome=lambda outcome, n: outcomes.append((outcome, n)))
        log.append(_rows(0, 10))
        wait_until(lambda: ("written", 10) in outcomes, poll_s=0.02)
        log.close()
    assert len(calls) == 2 and calls[0] == calls[1]
    assert read_serving_log(storage).height == 10


# the landing zone, seen by a long-running process ------------------------------------------------------------------
def test_landing_scan_sees_files_added_after_the_first_look(s3):
    """The sensor's process lives for days: a file landed after a scan must show up in the next one (no stale
    listing cache), and is requested once."""
    storage, client, bucket, server = s3
    storage.write_bytes(storage.landing_dir("2025-06-01").joinpath("a.jsonl"), b'{"x": 1}\n')
    first, state = scan(storage, LandingState())
    assert [(r.day, r.files) for r in first] == [("2025-06-01", ["a.jsonl"])]
    # another process (the annotation tool) lands more files: a new one that day, and a new day
    client.put_object(Bucket=bucket, Key="prefix/landing/comparisons/date=2025-06-01/b.jsonl", Body=b'{"x": 2}\n')
    client.put_object(Bucket=bucket, Key="prefix/landing/comparisons/date=2025-06-02/c.jsonl", Body=b'{"x": 3}\n')
    second, state = scan(storage, state)
    assert [(r.day, r.files) for r in second] == [("2025-06-01", ["b.jsonl"]), ("2025-06-02", ["c.jsonl"])]
    third, state = scan(storage, state)
    assert third == []
    # a file rewritten with other content is requested again, by its ETag (nothing downloaded to look)
    client.put_object(Bucket=bucket, Key="prefix/landing/comparisons/date=2025-06-02/c.jsonl", Body=b'{"x": 4}\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "read_bytes", lambda self, path: pytest.fail(f"scan downloaded {path}"))
        fourth, _ = scan(storage, state)
    assert [(r.day, r.files) for r in fourth] == [("2025-06-02", ["c.jsonl"])]
