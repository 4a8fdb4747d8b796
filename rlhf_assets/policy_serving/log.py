"""The policy-serving log: one row per generated response, in the behaviour-log schema off-policy evaluation reads
(evaluation/logged.py's LOG_SCHEMA), plus what the guard did with it.

Rows are the POLICY's samples, with the log-probs of the distribution they were sampled from, whether or not the
guard let them through (``served`` says what the user got: ``policy``, ``reference`` or ``refused``, and
``served_response`` the text). So the log is an unbiased sample of π_b for the next release's OPE (release_ope reads
it: a guarded row is still a draw of the policy), and the guard's evidence (``kl``, ``guard_reasons``) sits beside
it for the escalation sensor. Written like the reward-model service's log (serving/log.py: bounded buffer, a
background writer, atomic Parquet files, flushed on shutdown) under ``<root>/serving-logs/policy/date=YYYY-MM-DD/``.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import polars as pl

from rlhf_assets.evaluation.logged import LOG_SCHEMA as BEHAVIOR_SCHEMA
from rlhf_assets.serving.log import ServingLog
from rlhf_assets.storage import Storage

POLICY_LOG_DIR = ("serving-logs", "policy")

POLICY_LOG_SCHEMA: dict[str, Any] = {
    **BEHAVIOR_SCHEMA,
    "time": pl.Datetime("us", "UTC"),
    "request_id": pl.String,
    "item": pl.Int32,
    "key_hash": pl.String,            # sha256 of the request key, None without one
    "release": pl.String,
    "alias": pl.String,               # production | canary
    "reference_id": pl.String,        # the frozen reference the ratio is taken to
    "kl": pl.Float64,                 # Σ log π − log π_ref over the response tokens (nats)
    "served": pl.String,              # policy | reference | refused
    "guard_reasons": pl.List(pl.String),  # why it was guarded: "kl …", "blocklist …", "regex …", "classifier …"
    "served_response": pl.String,     # what the user got
    "latency_ms": pl.Float64,
}


class PolicyServingLog(ServingLog):
    """serving/log.py's writer with this log's folder and schema."""

    def _new_path(self) -> Any:
        now = datetime.now(UTC)
        return self.storage.path(*POLICY_LOG_DIR, f"date={now:%Y-%m-%d}",
                                 f"part-{now:%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet")

    def _write(self, path: Any, rows: list[dict[str, Any]]) -> None:
        buffer = io.BytesIO()
        pl.DataFrame(rows, schema=POLICY_LOG_SCHEMA).write_parquet(buffer)
        self.storage.write_bytes(path, buffer.getvalue())
        self.files.append(str(path))


def policy_log_files(storage: Storage) -> list[Any]:
    """The log's Parquet files, oldest day first (the escalation sensor reads them incrementally instead:
    automation/log_cursor.py)."""
    base = storage.path(*POLICY_LOG_DIR)
    if not base.exists():
        return []
    folders = sorted(p.name for p in base.iterdir() if p.name.startswith("date="))
    return [f for d in folders for f in storage.list_files(base / d) if f.name.endswith(".parquet")]


def read_policy_log(storage: Storage) -> pl.DataFrame:
    """Every row the policy service logged, in file order."""
    files = policy_log_files(storage)
    if not files:
        return pl.DataFrame(schema=POLICY_LOG_SCHEMA)
    return pl.concat([storage.read_parquet(f) for f in files], how="diagonal_relaxed")
