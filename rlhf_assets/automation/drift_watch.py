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
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.automation.drift_state import read_state, write_state
from rlhf_assets.evaluation.drift import (
    CALIBRATION_VERSION,
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


def _paths(storage: Storage, artifact_id: str, kind: str = "release") -> tuple[Any, Any]:
    """(table, calibration) of a version's reference: ``release`` (its held-out pairs, at release time) or
    ``production`` (its first served traffic)."""
    folder = storage.path(*BASE, "reference")
    stem = artifact_id if kind == "release" else f"{artifact_id}.{kind}"
    return folder / f"{stem}.parquet", folder / f"{stem}.calibration.json"


def reference_sample(model: Any, pairs: Sequence[tuple[str, str, str]], seed: int = 0) -> Sample:
    """What ``model`` (a ServedModel) says about (prompt, chosen, rejected) pairs, shown in a seeded random order as
    traffic is: the scores of both sides, each pair's calibrated P(a ≻ b), the prompt embeddings."""
    rng = random.Random(seed)
    scores, p, embeddings, groups = [], [], [], []
    for start in range(0, len(pairs), 32):
        chunk = [(prompt, a, b) if rng.random() < 0.5 else (prompt, b, a) for prompt, a, b in pairs[start:start + 32]]
        seqs = [model.encode(prompt, side) for prompt, a, b in chunk for side in (a, b)]
        s, e = model.run(seqs)
        scores.extend(s.tolist())
        embeddings.extend(np.asarray(e, np.float32))
        p.extend(model.probability(np.asarray(s[0::2]) - np.asarray(s[1::2])).tolist())
        groups.extend(start + k for k in range(len(chunk)) for _ in (0, 1))  # both sides of a pair: one prompt
    return Sample(np.asarray(scores), np.asarray(p), np.asarray(embeddings, np.float32), np.asarray(groups))


def store_reference(storage: Storage, artifact_id: str, sample: Sample, settings: DriftSettings,
                    kind: str = "release") -> Calibration:
    """Calibrate the thresholds for ``sample`` and keep both beside the artifact id; returns the calibration."""
    calibration = calibrate(sample, settings)
    table, cal = _paths(storage, artifact_id, kind)
    frame = pl.DataFrame({"score": sample.scores,
                          "embedding": pl.Series(sample.embeddings.tolist(), dtype=pl.Array(pl.Float32, 32))})
    if sample.groups is not None:
        frame = frame.with_columns(pl.Series("group", sample.groups, dtype=pl.Int64))
    pairs = pl.DataFrame({"p": sample.p if sample.p is not None else np.zeros(0)})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    storage.write_bytes(table, buffer.getvalue())
    buffer = io.BytesIO()
    pairs.write_parquet(buffer)
    storage.write_bytes(table.with_name(table.name.replace(".parquet", ".pairs.parquet")), buffer.getvalue())
    storage.write_bytes(cal, calibration.to_json().encode())
    return calibration


def load_reference(storage: Storage, artifact_id: str, kind: str = "release") -> tuple[Sample, Calibration] | None:
    table, cal = _paths(storage, artifact_id, kind)
    if not (table.exists() and cal.exists()):
        return None
    frame = storage.read_parquet(table)
    pairs = storage.read_parquet(table.with_name(table.name.replace(".parquet", ".pairs.parquet")))
    sample = Sample(frame["score"].to_numpy(), pairs["p"].to_numpy() if pairs.height else None,
                    np.asarray(frame["embedding"].to_list(), np.float32),
                    frame["group"].to_numpy() if "group" in frame.columns else None)
    stored = json.loads(storage.read_bytes(cal).decode())
    if isinstance(stored, dict) and stored.get("version") != CALIBRATION_VERSION and "settings" in stored:
        # made by an earlier detector (before the mean shift and its standard errors): the stored reference is still
        # good, so calibrate it again with the settings it had, once, and keep that
        return sample, store_reference(storage, artifact_id, sample, DriftSettings.from_dict(stored["settings"]), kind)
    return sample, Calibration.from_dict(stored)


@dataclass
class VersionWindow:
    artifact_id: str
    release: str | None
    alias: str | None
    result: WindowResult | None  # None: the window went into the version's production reference
    persistent: bool  # the persistence rule holds after this window
    collected: int = 0  # production-reference rows collected so far (while collecting)
    pooled_z: float | None = None  # the last persist_n windows' average mean shift ÷ its SE (the pooled rule)
    pooled_alarm: bool = False  # the pooled location rule holds after this window


def _read(storage: Storage, path: Any) -> pl.DataFrame:
    return storage.read_parquet(path) if path.exists() else pl.DataFrame(schema=LOG_SCHEMA)


def _write(storage: Storage, path: Any, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    storage.write_bytes(path, buffer.getvalue())


def feed(storage: Storage, rows: pl.DataFrame, settings: DriftSettings,
         reference_windows: int = 4) -> tuple[list[VersionWindow], list[str]]:
    """Check every full window the new rows complete, per version; returns the windows and the versions that have
    no stored reference (their rows are not kept).

    A version's first ``reference_windows`` windows of served traffic become its production reference (calibrated
    then, with its release reference's settings): production traffic is rarely distributed like the annotated pairs,
    so drift is measured against what the version first served, as NannyML measures against a reference period.
    Those windows are not checked (they are the reference); later ones are."""
    state = read_state(storage)
    out, missing = [], []
    if rows.height == 0:
        return out, missing
    for (artifact_id,), group in rows.sort("time").group_by("artifact_id", maintain_order=True):
        release_ref = load_reference(storage, artifact_id)
        if release_ref is None:
            missing.append(artifact_id)
            continue
        production = load_reference(storage, artifact_id, "production")
        window = release_ref[1].window
        pending_path = storage.path(*BASE, "pending", f"{artifact_id}.parquet")
        collect_path = storage.path(*BASE, "collecting", f"{artifact_id}.parquet")
        queue = pl.concat([_read(storage, pending_path), group.select(list(LOG_SCHEMA)).cast(LOG_SCHEMA)],
                          how="vertical")
        collected = _read(storage, collect_path)
        entry = state.setdefault(artifact_id, {"windows": 0, "alarm": False, "alarms": []})
        history = AlarmHistory(settings.persist_k, settings.persist_n, entry.get("alarms", []),
                               entry.get("shifts", []), pool_location=settings.pool_location)
        while queue.height >= window:
            chunk, queue = queue.head(window), queue.slice(window)
            last = chunk.row(-1, named=True)
            entry["windows"] += 1
            if production is None:
                collected = pl.concat([collected, chunk], how="vertical")
                entry["phase"] = f"collecting the production reference ({collected.height} rows)"
                if collected.height >= reference_windows * window:
                    store_reference(storage, artifact_id, Sample.from_log(collected),
                                    release_ref[1].drift_settings(), "production")
                    production = load_reference(storage, artifact_id, "production")
                    entry["phase"] = "monitoring"
                out.append(VersionWindow(artifact_id, last["release"], last["alias"], None, False, collected.height))
                continue
            result = check(production[1], production[0], Sample.from_log(chunk))  # the thresholds' own settings
            now_persistent = history.update(result.alarm, result.location)
            out.append(VersionWindow(artifact_id, last["release"], last["alias"], result, now_persistent,
                                     pooled_z=history.pooled_z, pooled_alarm=history.pooled_alarm))
            entry.update(alarm=now_persistent, alarms=history.alarms, shifts=history.shifts,
                         pooled_z=history.pooled_z, phase="monitoring",
                         last={t.name: t.statistic for t in result.tests})
        _write(storage, pending_path, queue)
        _write(storage, collect_path, collected if production is None else collected.head(0))
    write_state(storage, state)
    return out, missing
