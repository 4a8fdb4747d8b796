"""Reading a serving log incrementally: every file exactly once, the cursor kept to the two newest days."""

import io

import polars as pl

from rlhf_assets.automation.log_cursor import LogCursor, new_log_rows
from rlhf_assets.serving.log import LOG_DIR, LOG_SCHEMA
from rlhf_assets.storage import Storage


def put(store: Storage, day: str, name: str, value: int) -> None:
    buffer = io.BytesIO()
    pl.DataFrame({"value": [value]}).write_parquet(buffer)
    store.write_bytes(store.path(*LOG_DIR, f"date={day}", name), buffer.getvalue())


def values(rows: pl.DataFrame) -> list[int]:
    return sorted(rows["value"].to_list()) if rows.height else []


def test_no_log_yet_gives_an_empty_frame_of_the_schema(tmp_path):
    rows, cursor = new_log_rows(Storage(tmp_path), LogCursor())
    assert rows.height == 0 and rows.schema == pl.Schema(LOG_SCHEMA) and cursor == LogCursor()


def test_every_file_once_and_the_cursor_keeps_two_days(tmp_path):
    store = Storage(tmp_path)
    put(store, "2026-03-01", "a.parquet", 1)
    put(store, "2026-03-02", "b.parquet", 2)
    put(store, "2026-03-03", "c.parquet", 3)
    store.write_bytes(store.path(*LOG_DIR, "date=2026-03-03", "notes.txt"), b"not a log file")
    rows, cursor = new_log_rows(store, LogCursor())
    assert values(rows) == [1, 2, 3]
    assert cursor.to_dict() == {"done_before": "2026-03-02",
                                "read": {"2026-03-02": ["b.parquet"], "2026-03-03": ["c.parquet"]}}
    cursor = LogCursor.from_dict(cursor.to_dict())
    assert new_log_rows(store, cursor)[0].height == 0
    put(store, "2026-03-02", "late.parquet", 4)  # a replica still writing yesterday's folder
    put(store, "2026-03-04", "d.parquet", 5)
    rows, cursor = new_log_rows(store, cursor)
    assert values(rows) == [4, 5] and cursor.done_before == "2026-03-03"
    put(store, "2026-03-01", "too-late.parquet", 6)  # older than the two newest days: treated as done
    assert new_log_rows(store, cursor)[0].height == 0


def test_max_files_reads_oldest_first_and_the_rest_next_time(tmp_path):
    store = Storage(tmp_path)
    for i, name in enumerate(["a", "b", "c"]):
        put(store, "2026-03-01", f"{name}.parquet", i)
    rows, cursor = new_log_rows(store, LogCursor(), max_files=2)
    assert values(rows) == [0, 1]
    rows, cursor = new_log_rows(store, cursor, max_files=2)
    assert values(rows) == [2]


def test_a_backlog_over_max_files_across_many_days_loses_no_file(tmp_path):
    """The daemon was down for days: the files left unread when max_files stops a read must not be treated as done
    because newer days exist."""
    store = Storage(tmp_path)
    expected = []
    for d in range(1, 5):
        for f in range(3):
            put(store, f"2026-03-0{d}", f"{f}.parquet", 10 * d + f)
            expected.append(10 * d + f)
    cursor, seen = LogCursor(), []
    for _ in range(10):
        rows, cursor = new_log_rows(store, LogCursor.from_dict(cursor.to_dict()), max_files=2)
        seen += values(rows)
    assert sorted(seen) == expected
    assert cursor.done_before == "2026-03-03" and sorted(cursor.read) == ["2026-03-03", "2026-03-04"]
