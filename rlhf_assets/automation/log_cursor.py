"""Reading a serving log incrementally: only the files a sensor has not read yet.

Files live under ``serving-logs/reward-model/date=YYYY-MM-DD/`` (``rlhf serve``; the default) or
``serving-logs/policy/date=…/`` (``rlhf serve-policy``: pass its ``log_dir`` and ``schema``) and are never rewritten. The cursor remembers which
files of the two newest days were read (a service replica may still add a file to yesterday's folder just after
midnight) and treats older days as done, so it stays small however long the service runs. While a backlog larger
than ``max_files`` is read over several calls, it also keeps the days from the first one not yet finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from rlhf_assets.serving.log import LOG_DIR, LOG_SCHEMA
from rlhf_assets.storage import Storage


@dataclass
class LogCursor:
    done_before: str = ""  # days strictly before this are fully read
    read: dict[str, list[str]] = field(default_factory=dict)  # day → file names read

    def to_dict(self) -> dict:
        return {"done_before": self.done_before, "read": self.read}

    @classmethod
    def from_dict(cls, doc: dict | None) -> LogCursor:
        doc = doc or {}
        return cls(doc.get("done_before", ""), {k: list(v) for k, v in doc.get("read", {}).items()})


def new_log_rows(storage: Storage, cursor: LogCursor, max_files: int = 500, *, log_dir: Sequence[str] = LOG_DIR,
                 schema: dict[str, Any] = LOG_SCHEMA) -> tuple[pl.DataFrame, LogCursor]:
    """The rows of the log files not read yet (oldest first, at most ``max_files`` files), and the new cursor."""
    base = storage.path(*log_dir)
    if not base.exists():
        return pl.DataFrame(schema=schema), cursor
    days = sorted(p.name[len("date="):] for p in base.iterdir() if p.name.startswith("date="))
    days = [d for d in days if d >= cursor.done_before]
    read = {k: list(v) for k, v in cursor.read.items()}
    frames, taken, stopped = [], 0, None  # stopped: the first day with a file left unread (max_files reached)
    for day in days:
        seen = set(read.get(day, []))
        for f in storage.list_files(base / f"date={day}"):
            if f.name in seen or not f.name.endswith(".parquet"):
                continue
            if taken >= max_files:
                stopped = stopped or day
                break
            frames.append(storage.read_parquet(f))
            read.setdefault(day, []).append(f.name)
            taken += 1
    keep = days[-2:] if days else []
    if stopped is not None and stopped < keep[0]:  # a backlog: days from the one left unfinished are not done yet
        keep = [d for d in days if d >= stopped]
    new = LogCursor(done_before=keep[0] if keep else cursor.done_before,
                    read={d: v for d, v in read.items() if d in keep})
    rows = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=schema)
    return rows, new
