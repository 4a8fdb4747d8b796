"""Serving-log rows as the service writes them, for the audit-sampling tests."""

from __future__ import annotations

import hashlib
from datetime import datetime

import numpy as np

from rlhf_assets.serving.log import ServingLog
from rlhf_assets.storage import Storage


def log_rows(n_pairs: int, texts: bool, when: datetime) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n_pairs):
        prompt, ra, rb = f"prompt {i} about {'cats' if i % 2 else 'tax'}", f"answer A{i}", f"answer B{i}"
        p_a = float(1 / (1 + np.exp(-rng.normal())))
        emb = (rng.normal(size=32) + (6 if i % 2 else -6) * np.eye(32)[0]).astype(np.float32).tolist()
        for side, response in (("a", ra), ("b", rb)):
            rows.append({"time": when, "request_id": f"r{i}", "item": 0, "key_hash": None, "endpoint": "compare",
                         "side": side, "artifact_id": "rm-1", "release": "r1", "alias": "production",
                         "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                         "response_sha256": hashlib.sha256(response.encode()).hexdigest(), "prompt_tokens": 3,
                         "tokens": 6, "truncated": None, "score": 0.0, "p_a": p_a, "latency_ms": 1.0,
                         "cache_hit": False, "embedding": emb, "prompt": prompt if texts else None,
                         "response": response if texts else None})
    return rows


def write_log(storage: Storage, rows: list[dict]) -> str:
    """As the service writes it: under the day it is written. Returns that day."""
    log = ServingLog(storage, flush_rows=len(rows), flush_s=3600, buffer_rows=len(rows) + 1)
    log.append(rows)
    log.close()
    (folder,) = storage.path("serving-logs", "reward-model").iterdir()
    return folder.name.removeprefix("date=")
