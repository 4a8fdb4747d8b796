"""The app's answer store: a rotation interrupted at either step is finished or redone on the next start, so each
answer lands exactly once; the same holds on S3 (moto on loopback)."""

from __future__ import annotations

import json

import pytest

from rlhf_assets.annotation.answers import AnswerConflict, AnswerStore
from rlhf_assets.automation.landing_watch import LandingState, scan
from rlhf_assets.storage import Storage

DAY = "2026-01-02"


def record(cid: str, label: str = "a", kind: str = "pair") -> dict:
    return {"comparison_id": cid, "prompt": "p", "response_a": f"x {cid}", "response_b": f"y {cid}", "label": label,
            "annotator_id": "alice", "created_at": f"{DAY}T10:00:00.000+00:00", "item_kind": kind}


def landed_ids(storage: Storage, kind: str = "comparisons") -> list[str]:
    out = []
    for path in storage.list_files(storage.landing_dir(DAY, kind)):
        out += [json.loads(line)["comparison_id"] for line in storage.read_bytes(path).decode().splitlines()]
    return sorted(out)


class Crash(Exception):
    pass


def test_crash_before_the_landing_file_is_written_rotates_again(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    store = AnswerStore(storage).open()
    store.store_answer(record("c1"))
    store.store_answer(record("c2"))
    real = Storage.write_bytes

    def failing(self, path, data):
        if "landing" in str(path):
            raise Crash("killed while writing the landing file")
        return real(self, path, data)

    monkeypatch.setattr(Storage, "write_bytes", failing)
    with pytest.raises(Crash):
        store.rotate()
    monkeypatch.setattr(Storage, "write_bytes", real)
    assert landed_ids(storage) == []
    reopened = AnswerStore(storage).open()  # the half-done rotation is dropped: both answers wait again
    assert reopened.waiting() == 2 and reopened.status("c1") == "answered"
    assert reopened.rotate() and landed_ids(storage) == ["c1", "c2"]
    assert AnswerStore(storage).open().waiting() == 0


def test_crash_after_the_landing_file_is_written_does_not_land_twice(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    store = AnswerStore(storage).open()
    store.store_answer(record("c1"))
    real = Storage.write_json

    def failing(self, path, obj):
        if "rotations" in str(path) and obj.get("landed"):
            raise Crash("killed before the rotation was marked landed")
        return real(self, path, obj)

    monkeypatch.setattr(Storage, "write_json", failing)
    with pytest.raises(Crash):
        store.rotate()
    monkeypatch.setattr(Storage, "write_json", real)
    assert landed_ids(storage) == ["c1"]
    reopened = AnswerStore(storage).open()  # the file exists: the rotation is completed, nothing waits
    assert reopened.waiting() == 0 and reopened.rotate() == []
    assert landed_ids(storage) == ["c1"]


def test_conflicts(tmp_path):
    store = AnswerStore(Storage(tmp_path)).open()
    ack, new = store.store_answer(record("c1", "a"))
    assert new and store.store_answer(record("c1", "a")) == (ack, False)
    with pytest.raises(AnswerConflict, match="already answered"):
        store.store_answer(record("c1", "tie"))
    store.store_skip("c2", "alice", "unreadable", DAY, "pair")
    with pytest.raises(AnswerConflict, match="skipped"):
        store.store_answer(record("c2"))
    with pytest.raises(AnswerConflict, match="already answered"):
        store.store_skip("c1", "alice", "changed my mind", DAY, "pair")


def test_answers_land_once_on_s3(s3_storage):
    storage, _, _ = s3_storage
    store = AnswerStore(storage).open()
    store.store_answer(record("s1"))
    store.store_answer(record("s2", "b"))
    store.store_answer(record("s3", kind="audit"))
    store.store_skip("s4", "alice", "cannot judge", DAY, "pair")
    assert len(store.rotate()) == 2
    assert landed_ids(storage) == ["s1", "s2"] and landed_ids(storage, "audits") == ["s3"]
    requests, state = scan(storage, LandingState())
    assert [(r.day, len(r.files)) for r in requests] == [(DAY, 1)]
    assert scan(storage, state)[0] == []
    reopened = AnswerStore(storage).open()
    assert reopened.waiting() == 0 and reopened.status("s2") == "answered" and reopened.status("s4") == "skipped"
    assert reopened.rotate() == [] and landed_ids(storage) == ["s1", "s2"]


def test_a_failed_rotation_is_settled_by_the_next_one_in_the_same_process(tmp_path, monkeypatch):
    """The store fails after taking the landing file (a lost reply) and then before it: the next rotations of the
    same running app land each answer once."""
    storage = Storage(tmp_path)
    store = AnswerStore(storage).open()
    store.store_answer(record("c1"))
    real = Storage.write_bytes

    def written_then_failed(self, path, data):
        digest = real(self, path, data)
        if "landing" in str(path):
            raise OSError("the store took the file but the reply was lost")
        return digest

    monkeypatch.setattr(Storage, "write_bytes", written_then_failed)
    with pytest.raises(OSError):
        store.rotate()
    monkeypatch.setattr(Storage, "write_bytes", real)
    assert store.rotate() == [] and store.waiting() == 0 and landed_ids(storage) == ["c1"]

    store.store_answer(record("c2"))

    def refused(self, path, data):
        if "landing" in str(path):
            raise OSError("the store is down")
        return real(self, path, data)

    monkeypatch.setattr(Storage, "write_bytes", refused)
    with pytest.raises(OSError):
        store.rotate()
    monkeypatch.setattr(Storage, "write_bytes", real)
    assert store.waiting() == 1 and len(store.rotate()) == 1
    assert landed_ids(storage) == ["c1", "c2"] and AnswerStore(storage).open().waiting() == 0
