"""Storage (local and S3 via moto) and ingest_landing: atomic writes, hidden files, unreadable files quarantined."""

from __future__ import annotations

import hashlib
import json
import os

import polars as pl
import pytest

from rlhf_assets.preference.landing import ingest_landing
from rlhf_assets.storage import Storage, sha256_bytes

DAY = "2024-05-01"


def rec(i: int) -> dict:
    return {
        "comparison_id": f"c{i}",
        "prompt": f"prompt {i}",
        "response_a": f"response a {i}",
        "response_b": f"response b {i}",
        "label": "a",
        "annotator_id": f"ann{i}",
        "created_at": f"{DAY}T10:00:00Z",
    }


GOOD_BYTES = b"".join(json.dumps(rec(i)).encode() + b"\n" for i in range(3))
BAD_BYTES = b"\x00\x01\x02 not json at all"


def _all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


# local ------------------------------------------------------------------------------------------------------


def test_write_bytes_is_atomic_and_leaves_no_temp_files(tmp_path):
    storage = Storage(tmp_path / "root")
    assert storage.is_local
    target = storage.path("tables", "t", "x.bin")
    digest = storage.write_bytes(target, b"first")
    assert digest == hashlib.sha256(b"first").hexdigest()
    assert storage.read_bytes(target) == b"first"
    storage.write_bytes(target, b"second")  # overwrite in place
    assert storage.read_bytes(target) == b"second"
    assert _all_files(tmp_path / "root") == [os.path.join("tables", "t", "x.bin")]


def test_failed_write_leaves_neither_target_nor_temp_file(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    target = storage.path("tables", "t", "new.bin")

    def broken_replace(src, dst):
        assert os.path.exists(src)  # the temp file was written in full before the rename
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        storage.write_bytes(target, b"payload")
    monkeypatch.undo()
    assert not os.path.exists(os.fspath(target))
    assert os.listdir(os.path.dirname(os.fspath(target))) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    target = storage.path("a.json")
    storage.write_json(target, {"v": 1})
    def broken_replace(src, dst):
        raise OSError("nope")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        storage.write_json(target, {"v": 2})
    monkeypatch.undo()
    assert storage.read_json(target) == {"v": 1}
    assert _all_files(tmp_path) == ["a.json"]


def test_write_parquet_is_deterministic_and_round_trips(tmp_path):
    storage = Storage(tmp_path)
    frame = pl.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [0.5, 1.5, None]})
    first = storage.write_parquet(storage.table_path("t", "2024-05-01"), frame)
    second = storage.write_parquet(storage.table_path("t", "2024-05-02"), frame)
    assert first == second == sha256_bytes(storage.read_bytes(storage.table_path("t", "2024-05-01")))
    assert storage.read_parquet(storage.table_path("t", "2024-05-02")).equals(frame)


def test_list_files_skips_hidden_files_and_directories(tmp_path):
    storage = Storage(tmp_path)
    d = storage.landing_dir(DAY)
    assert storage.list_files(d) == []  # missing directory: nothing, no error
    for name in ("b.jsonl", "a.jsonl", ".hidden", ".a.jsonl.tmp-123"):
        storage.write_bytes(d / name, b"{}")
    os.makedirs(os.fspath(d / "subdir"))
    assert [p.name for p in storage.list_files(d)] == ["a.jsonl", "b.jsonl"]


def test_layout_paths(tmp_path):
    storage = Storage(tmp_path)
    assert storage.landing_dir(DAY).as_posix().endswith(f"landing/comparisons/date={DAY}")
    assert storage.quarantine_dir(DAY).as_posix().endswith(f"quarantine/date={DAY}")
    assert storage.table_path("x").name == "__all__.parquet"
    assert storage.manifest_path("x", DAY).name == f"{DAY}.manifest.json"


def _check_ingest_landing(storage: Storage) -> None:
    landing = storage.landing_dir(DAY)
    storage.write_bytes(landing / "good.jsonl", GOOD_BYTES)
    storage.write_bytes(landing / "broken.jsonl", BAD_BYTES)

    batch = ingest_landing(storage, DAY)

    assert batch.records.height == 3
    assert batch.records["comparison_id"].to_list() == ["c0", "c1", "c2"]
    assert batch.records["source_file"].unique().to_list() == ["good.jsonl"]
    by_status = {f.status: f for f in batch.files}
    assert len(batch.files) == 2 and set(by_status) == {"ok", "unreadable"}
    assert by_status["ok"].sha256 == sha256_bytes(GOOD_BYTES) and by_status["ok"].rows == 3
    bad = by_status["unreadable"]
    assert bad.sha256 == sha256_bytes(BAD_BYTES) and bad.rows == 0 and "binary" in bad.error
    assert batch.unreadable == [bad]

    moved = storage.quarantine_dir(DAY) / "files" / "broken.jsonl"
    assert bad.path == str(moved)
    assert storage.read_bytes(moved) == BAD_BYTES
    reason = storage.read_json(moved.with_name("broken.jsonl.reason.json"))
    assert reason["status"] == "unreadable" and reason["error"] == bad.error
    assert reason["sha256"] == sha256_bytes(BAD_BYTES)
    assert reason["moved_from"].endswith("broken.jsonl")
    assert [p.name for p in storage.list_files(landing)] == ["good.jsonl"]

    # A second run no longer sees the unreadable file.
    again = ingest_landing(storage, DAY)
    assert [f.status for f in again.files] == ["ok"] and again.records.height == 3


def test_ingest_landing_local_quarantines_unreadable_files(tmp_path):
    storage = Storage(tmp_path)
    _check_ingest_landing(storage)
    assert not os.path.exists(os.fspath(storage.landing_dir(DAY) / "broken.jsonl"))


def test_ingest_landing_empty_day(tmp_path):
    batch = ingest_landing(Storage(tmp_path), DAY)
    assert batch.records.height == 0 and batch.files == []


# S3 (moto server) -------------------------------------------------------------------------------------------


def test_s3_write_read_list_move(s3_storage):
    storage, client, bucket = s3_storage
    assert not storage.is_local and storage.uri.startswith(f"s3://{bucket}/prefix")
    d = storage.landing_dir(DAY)
    assert storage.list_files(d) == []
    assert storage.write_bytes(d / "b.jsonl", b"two") == sha256_bytes(b"two")
    storage.write_bytes(d / "a.jsonl", b"one")
    storage.write_bytes(d / ".hidden", b"x")
    assert storage.read_bytes(d / "a.jsonl") == b"one"
    assert [p.name for p in storage.list_files(d)] == ["a.jsonl", "b.jsonl"]

    frame = pl.DataFrame({"x": [1, 2]})
    digest = storage.write_parquet(storage.table_path("t", DAY), frame)
    assert digest == storage.write_parquet(storage.table_path("t", "other"), frame)
    assert storage.read_parquet(storage.table_path("t", DAY)).equals(frame)
    storage.write_json(storage.manifest_path("t", DAY), {"k": 1})
    assert storage.read_json(storage.manifest_path("t", DAY)) == {"k": 1}

    target = storage.path("elsewhere", "a.jsonl")
    storage.move(d / "a.jsonl", target)
    assert storage.read_bytes(target) == b"one"
    assert not storage.exists(d / "a.jsonl")
    assert [p.name for p in storage.list_files(d)] == ["b.jsonl"]

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "prefix/elsewhere/a.jsonl",
        f"prefix/landing/comparisons/date={DAY}/.hidden",
        f"prefix/landing/comparisons/date={DAY}/b.jsonl",
        f"prefix/tables/t/{DAY}.manifest.json",
        f"prefix/tables/t/{DAY}.parquet",
        "prefix/tables/t/other.parquet",
    ]


def test_s3_ingest_landing_quarantines_unreadable_files(s3_storage):
    storage, client, bucket = s3_storage
    _check_ingest_landing(storage)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        f"prefix/landing/comparisons/date={DAY}/good.jsonl",
        f"prefix/quarantine/date={DAY}/files/broken.jsonl",
        f"prefix/quarantine/date={DAY}/files/broken.jsonl.reason.json",
    ]
