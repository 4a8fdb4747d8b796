"""Storage (local and S3 via moto) and ingest_landing: atomic writes, hidden files, unreadable files quarantined."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os

import polars as pl
import pytest

from rlhf_assets.preference.ingest import read_comparison_file
from rlhf_assets.preference.landing import conservation, count_landing, count_rows, ingest_landing
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
    assert (reason["landing_rows"], reason["landing_rows_error"]) == (1, None)  # one non-blank line of bytes
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


# counting the landing zone apart from ingest ----------------------------------------------------------------


def _parquet(frame: pl.DataFrame, **kwargs) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, **kwargs)
    return buf.getvalue()


# Blank lines (only ASCII whitespace) are no rows; CRLF, a missing final newline and a leading BOM change nothing.
JSONL_LINES = b"\xef\xbb\xbf" + GOOD_BYTES + b"\n  \n\t\r\n\x0c\n{broken\r\n" + GOOD_BYTES.rstrip(b"\n")
COUNTED = {
    "jsonl": ("a.jsonl", JSONL_LINES, 7),
    "ndjson": ("a.NDJSON", JSONL_LINES, 7),
    "jsonl.gz": ("a.jsonl.gz", gzip.compress(JSONL_LINES), 7),
    "multi-member gzip": ("a.jsonl.gz", gzip.compress(GOOD_BYTES) + gzip.compress(GOOD_BYTES), 6),
    "parquet": ("a.parquet", _parquet(pl.DataFrame([rec(i) for i in range(5)])), 5),
    "parquet, row groups": ("a.parquet", _parquet(pl.DataFrame([rec(i) for i in range(50)]), row_group_size=7), 50),
    "empty parquet": ("a.parquet", _parquet(pl.DataFrame(schema={"comparison_id": pl.String})), 0),
    "binary named jsonl": ("b.jsonl", b"\x00\x01\n\n\x02", 2),  # unreadable, yet its lines count
    "empty file": ("e.jsonl", b"", 0),
    "empty gzip": ("e.jsonl.gz", gzip.compress(b" \n"), 0),
}


@pytest.mark.parametrize("case", list(COUNTED), ids=list(COUNTED))
def test_count_rows_from_the_bytes(case):
    name, data, rows = COUNTED[case]
    assert count_rows(name, data) == (rows, None)
    assert count_rows(name, io.BytesIO(data)) == (rows, None)  # an open file (Parquet: only its footer is read)
    frame, report = read_comparison_file(name, data)
    if report.status == "ok":  # the counter and ingest agree on what a row is
        assert frame.height == report.rows == rows


UNCOUNTABLE = {
    "corrupt gzip": ("c.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "gunzip"),
    "not gzip at all": ("c.jsonl.gz", GOOD_BYTES, "gunzip"),
    "truncated gzip": ("c.jsonl.gz", gzip.compress(GOOD_BYTES * 50)[:-12], "gunzip"),
    "corrupt parquet": ("c.parquet", b"PAR1" + b"\x13" * 64 + b"PAR1", "Parquet footer"),
    "jsonl named parquet": ("c.parquet", GOOD_BYTES, "Parquet footer"),
}


@pytest.mark.parametrize("case", list(UNCOUNTABLE), ids=list(UNCOUNTABLE))
def test_uncountable_bytes_say_why(case):
    name, data, why = UNCOUNTABLE[case]
    rows, error = count_rows(name, data)
    assert rows is None and why in error
    assert read_comparison_file(name, data)[1].status == "unreadable"  # so it can only be quarantined whole


def test_count_landing_covers_landing_and_quarantined_files(tmp_path):
    storage = Storage(tmp_path)
    landing = storage.landing_dir(DAY)
    storage.write_bytes(landing / "good.jsonl", GOOD_BYTES + b"\n\n")
    storage.write_bytes(landing / "good.parquet", _parquet(pl.DataFrame([rec(i) for i in range(10, 14)])))
    storage.write_bytes(landing / "good.jsonl.gz", gzip.compress(b"\n".join(json.dumps(rec(i)).encode()
                                                                            for i in range(20, 22))))
    storage.write_bytes(landing / "broken.jsonl", BAD_BYTES + b"\n\x00\n")  # 2 lines, unreadable
    storage.write_bytes(landing / "cut.jsonl.gz", gzip.compress(GOOD_BYTES)[:-12])  # uncountable, unreadable
    storage.write_bytes(landing / "x.reason.json", b"{}\n")  # a landed file that merely looks like a reason file

    batch = ingest_landing(storage, DAY)
    assert batch.records.height == 3 + 4 + 2
    assert {f.path.rsplit("/", 1)[-1]: f.landing_rows for f in batch.files} == {
        "good.jsonl": 3, "good.parquet": 4, "good.jsonl.gz": 2, "broken.jsonl": 2, "cut.jsonl.gz": None,
        "x.reason.json": 1}
    cut = storage.read_json(storage.quarantine_dir(DAY) / "files" / "cut.jsonl.gz.reason.json")
    assert cut["landing_rows"] is None and "gunzip" in cut["landing_rows_error"]

    count = count_landing(storage, DAY)
    by_name = {f.name: f for f in count.files}
    assert {n: (f.rows, f.quarantined) for n, f in by_name.items()} == {
        "good.jsonl": (3, False), "good.parquet": (4, False), "good.jsonl.gz": (2, False),
        "broken.jsonl": (2, True), "cut.jsonl.gz": (None, True), "x.reason.json": (1, True)}
    assert (count.rows_landing, count.rows_in_landing_zone, count.rows_in_quarantined_files) == (12, 9, 3)
    assert [f.name for f in count.uncountable] == ["cut.jsonl.gz"] and "gunzip" in by_name["cut.jsonl.gz"].error
    assert all(f.recorded for f in count.files)

    # The balance: every counted row is valid, quarantined, or in a file quarantined whole; per file too.
    records = batch.records
    none = records.head(0)
    ok = conservation(count, records.head(5), records.tail(records.height - 5))
    assert ok["conserved"] and (ok["rows_landing"], ok["rows_in_quarantined_files"], ok["difference"]) == (12, 3, 0)
    assert ok["files_uncountable"] == {"cut.jsonl.gz": by_name["cut.jsonl.gz"].error} and ok["mismatched_files"] == {}
    dropped = conservation(count, records.tail(records.height - 1), none)
    assert not dropped["conserved"] and dropped["difference"] == 1
    assert dropped["mismatched_files"] == {"good.jsonl": {"landing": 3, "valid_or_quarantined": 2, "error": None}}
    assert conservation(count, pl.concat([records, records.head(1)]), none)["difference"] == -1
    swapped = conservation(count, pl.concat([records.tail(records.height - 1), records.tail(1)]), none)
    assert swapped["difference"] == 0 and not swapped["conserved"]  # totals balance, two files do not
    assert set(swapped["mismatched_files"]) == {"good.jsonl", records["source_file"][-1]}
    stray = records.with_columns(pl.lit("elsewhere.jsonl").alias("source_file"))
    assert not conservation(count, stray, none)["conserved"]

    # The count of a quarantined file is the one recorded, not recomputed; without a record it is recounted.
    files = storage.quarantine_dir(DAY) / "files"
    storage.write_json(files / "broken.jsonl.reason.json", {"landing_rows": 40})
    assert {f.name: f.rows for f in count_landing(storage, DAY).files}["broken.jsonl"] == 40
    storage.write_json(files / "broken.jsonl.reason.json", {"error": "written before rows were counted"})
    recount = {f.name: f for f in count_landing(storage, DAY).files}["broken.jsonl"]
    assert (recount.rows, recount.recorded) == (2, False)
    # Rows added to a landing file after ingest show in the count: it reads the bytes, not the table.
    storage.write_bytes(landing / "good.jsonl", GOOD_BYTES * 2)
    assert count_landing(storage, DAY).rows_in_landing_zone == 6 + 4 + 2
