"""The serving log: every scored item, for the monitoring sensors and the next release's off-policy evaluation.

Rows are appended to a bounded buffer by the request path (never blocking it: a full buffer drops the row and counts
it) and written by a background thread as Parquet files, atomically, under
``<root>/serving-logs/reward-model/date=YYYY-MM-DD/`` — one file per flush, at most ``log_flush_rows`` rows, at least
every ``log_flush_s`` seconds, and once more on shutdown. A write that fails (the store is down, after the storage
root's retries) keeps its rows in the buffer for the next flush, so nothing already accepted is lost while the
buffer has room; requests go on being served meanwhile. The next flush writes the same rows to the same file name
first, so a write whose answer was lost but which did land is overwritten with the same bytes, never duplicated.
"""

from __future__ import annotations

import io
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import polars as pl

from rlhf_assets.storage import Storage

LOG_DIR = ("serving-logs", "reward-model")

#: One row per scored item (a compared pair gives two rows, ``side`` a and b, both with ``p_a``).
LOG_SCHEMA: dict[str, Any] = {
    "time": pl.Datetime("us", "UTC"),
    "request_id": pl.String,
    "item": pl.Int32,               # the item's index in its request (a compared pair's two rows share it)
    "key_hash": pl.String,          # sha256 of the request key (X-Request-Key / key), None without one
    "endpoint": pl.String,          # score | compare
    "side": pl.String,              # None | a | b (compare)
    "artifact_id": pl.String,
    "release": pl.String,
    "alias": pl.String,             # production | canary | pinned | version (a /v1/models/{id} request)
    "prompt_sha256": pl.String,
    "response_sha256": pl.String,
    "prompt_tokens": pl.Int32,
    "tokens": pl.Int32,             # prompt + response + special tokens, after truncation
    "truncated": pl.String,         # None | prompt | response
    "score": pl.Float64,            # raw reward-model score
    "p_a": pl.Float64,              # calibrated P(a ≻ b) for compared pairs
    "latency_ms": pl.Float64,
    "cache_hit": pl.Boolean,
    "embedding": pl.Array(pl.Float32, 32),
    "prompt": pl.String,            # None when log_texts is off
    "response": pl.String,
}


class ServingLog:
    def __init__(self, storage: Storage, *, flush_rows: int, flush_s: float, buffer_rows: int,
                 on_outcome: Callable[[str, int], None] | None = None):
        self.storage = storage
        self.flush_rows, self.flush_s, self.buffer_rows = int(flush_rows), float(flush_s), int(buffer_rows)
        self.on_outcome = on_outcome or (lambda outcome, n: None)
        self._rows: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.files: list[str] = []
        self._pending: tuple[Any, int] | None = None  # (path, rows) of a file that failed: retried as it was
        self._thread = threading.Thread(target=self._loop, name="serving-log", daemon=True)
        self._thread.start()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows; drops (and counts) what does not fit. Never blocks on the store."""
        with self._lock:
            room = self.buffer_rows - len(self._rows)
            kept = rows[:max(room, 0)]
            self._rows.extend(kept)
            full = len(self._rows) >= self.flush_rows
        if len(kept) < len(rows):
            self.on_outcome("dropped", len(rows) - len(kept))
        if full:
            self._wake.set()

    def close(self, timeout: float = 60.0) -> None:
        """Write everything buffered and stop (SIGTERM path)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    @property
    def buffered(self) -> int:
        return len(self._rows)

    # writer thread ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            while self._flush_once():
                pass
            if self._stopping:
                self._flush_once(final=True)
                return

    def _flush_once(self, final: bool = False) -> bool:
        """Write one file of at most flush_rows rows; True when a full file was written and more may wait."""
        with self._lock:  # only this thread removes rows, from the left: the first n stay the same rows
            path, n = self._pending or (None, min(len(self._rows), self.flush_rows))
            rows = [self._rows[i] for i in range(n)]
        if not rows:
            return False
        path = path or self._new_path()
        try:
            self._write(path, rows)
        except Exception as exc:  # noqa: BLE001 - the store is down: keep the rows for the next flush
            self._pending = (path, n)
            self.on_outcome("failed", len(rows))
            if final:
                print(f"serving log: {self.buffered} buffered row(s) could not be written at shutdown: {exc}",
                      file=sys.stderr, flush=True)
            else:
                time.sleep(min(self.flush_s, 1.0))
            return False
        with self._lock:
            for _ in range(n):
                self._rows.popleft()
            self._pending = None
        self.on_outcome("written", n)
        return n == self.flush_rows

    def _new_path(self) -> Any:
        now = datetime.now(UTC)
        name = f"part-{now:%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        return self.storage.path(*LOG_DIR, f"date={now:%Y-%m-%d}", name)

    def _write(self, path: Any, rows: list[dict[str, Any]]) -> None:
        buffer = io.BytesIO()
        pl.DataFrame(rows, schema=LOG_SCHEMA).write_parquet(buffer)
        self.storage.write_bytes(path, buffer.getvalue())
        self.files.append(str(path))


def read_serving_log(storage: Storage, day: str | None = None) -> pl.DataFrame:
    """Every row the service logged (on ``day`` when given), in file order."""
    base = storage.path(*LOG_DIR)
    days = [f"date={day}"] if day else sorted(p.name for p in base.iterdir() if p.name.startswith("date=")) \
        if base.exists() else []
    files = [f for d in days for f in storage.list_files(base / d) if f.name.endswith(".parquet")]
    if not files:
        return pl.DataFrame(schema=LOG_SCHEMA)
    return pl.concat([storage.read_parquet(f) for f in files])
