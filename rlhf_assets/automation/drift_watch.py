"""Served traffic against each version's drift reference, window by window.

A release's reference is what its reward model, served exactly as the service serves it, says about the release's
held-out test pairs (both responses scored, the calibrated P(a ≻ b) of each pair, the prompt embeddings); its
thresholds are calibrated once, when the release is made (the ``drift_reference`` asset), and stored beside it under
``monitoring/drift/reference/<artifact id>.*``. The drift sensor then feeds the served rows of each version, in
order, into windows of exactly the calibrated size (rows that do not fill a window yet wait in
``monitoring/drift/pending/<artifact id>.parquet``), checks each window and keeps the newest alarm flags for the
persistence rule in ``monitoring/drift/state.json``.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.automation.drift_state import read_state, write_state
from rlhf_assets.evaluation.drift import (
    AlarmHistory,
    Calibration,
    DriftSettings,
    Sample,
    WindowResult,
    calibrate,
    check,
)
from rlhf_assets.serving.log import LOG_SCHEMA
from rlhf_assets.storage import Storage

BASE = ("monitoring", "drift")


def _paths(storage: Storage, artifact_id: str) -> tuple[Any, Any]:
    folder = storage.path(*BASE, "reference")
    return folder / f"{artifact_id}.parquet", folder / f"{artifact_id}.calibration.json"


def reference_sample(model: Any, pairs: Sequence[tuple[str, str, str]], seed: int = 0) -> Sample:
    """What ``model`` (a ServedModel) says about (prompt, chosen, rejected) pairs, shown in a seeded random order as
    traffic is: the scores of both sides, each pair's calibrated P(a ≻ b), the prompt embeddings."""
    rng = random.Random(seed)
    scores, p, embeddings = [], [], []
    for start in range(0, len(pairs), 32):
        chunk = [(prompt, a, b) if rng.random() < 0.5 else (prompt, b, a) for prompt, a, b in pairs[start:start + 32]]
        seqs = [model.encode(prompt, side) for prompt, a, b in chunk for side in (a, b)]
        s, e = model.run(seqs)
        scores.extend(s.tolist())
        embeddings.extend(np.asarray(e, np.float32))
        p.extend(model.probability(np.asarray(s[0::2]) - np.asarray(s[1::2])).tolist())
    return Sample(np.asarray(scores), np.asarray(p), np.asarray(embeddings, np.float32))


def store_reference(storage: Storage, artifact_id: str, sample: Sample, settings: DriftSettings) -> Calibration:
    """Calibrate the thresholds for ``sample`` and keep both beside the artifact id; returns the calibration."""
    calibration = calibrate(sample, settings)
    table, cal = _paths(storage, artifact_id)
    frame = pl.DataFrame({"score": sample.scores,
                          "embedding": pl.Series(sample.embeddings.tolist(), dtype=pl.Array(pl.Float32, 32))})
    pairs = pl.DataFrame({"p": sample.p if sample.p is not None else np.zeros(0)})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    storage.write_bytes(table, buffer.getvalue())
    buffer = io.BytesIO()
    pairs.write_parquet(buffer)
    storage.write_bytes(table.with_name(f"{artifact_id}.pairs.parquet"), buffer.getvalue())
    storage.write_bytes(cal, calibration.to_json().encode())
    return calibration


def load_reference(storage: Storage, artifact_id: str) -> tuple[Sample, Calibration] | None:
    table, cal = _paths(storage, artifact_id)
    if not (table.exists() and cal.exists()):
        return None
    frame = storage.read_parquet(table)
    pairs = storage.read_parquet(table.with_name(f"{artifact_id}.pairs.parquet"))
    sample = Sample(frame["score"].to_numpy(), pairs["p"].to_numpy() if pairs.height else None,
                    np.asarray(frame["embedding"].to_list(), np.float32))
    return sample, Calibration.from_json(storage.read_bytes(cal).decode())


@dataclass
class VersionWindow:
    artifact_id: str
    release: str | None
    alias: str | None
    result: WindowResult
    persistent: bool  # the persistence rule holds after this window


def feed(storage: Storage, rows: pl.DataFrame, settings: DriftSettings) -> tuple[list[VersionWindow], list[str]]:
    """Check every full window the new rows complete, per version; returns the windows and the versions that have
    no stored reference (their rows are not kept)."""
    state = read_state(storage)
    out, missing = [], []
    if rows.height == 0:
        return out, missing
    for (artifact_id,), group in rows.sort("time").group_by("artifact_id", maintain_order=True):
        loaded = load_reference(storage, artifact_id)
        if loaded is None:
            missing.append(artifact_id)
            continue
        reference, calibration = loaded
        window = calibration.window
        pending_path = storage.path(*BASE, "pending", f"{artifact_id}.parquet")
        pending = storage.read_parquet(pending_path) if pending_path.exists() else pl.DataFrame(schema=LOG_SCHEMA)
        queue = pl.concat([pending, group.select(list(LOG_SCHEMA)).cast(LOG_SCHEMA)], how="vertical")
        entry = state.setdefault(artifact_id, {"windows": 0, "alarm": False, "alarms": []})
        history = AlarmHistory(settings.persist_k, settings.persist_n, entry.get("alarms", []))
        while queue.height >= window:
            chunk, queue = queue.head(window), queue.slice(window)
            result = check(calibration, reference, Sample.from_log(chunk))  # the thresholds' own settings
            now_persistent = history.update(result.alarm)
            last = chunk.row(-1, named=True)
            out.append(VersionWindow(artifact_id, last["release"], last["alias"], result, now_persistent))
            entry.update(windows=entry["windows"] + 1, alarm=now_persistent, alarms=history.alarms,
                         last={t.name: t.statistic for t in result.tests})
        buffer = io.BytesIO()
        queue.write_parquet(buffer)
        storage.write_bytes(pending_path, buffer.getvalue())
    write_state(storage, state)
    return out, missing
