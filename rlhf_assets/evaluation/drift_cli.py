"""``rlhf drift check``: a window of serving-log rows against a reference, from files (rlhf_assets/evaluation/drift.py).

Both files are serving-log rows (``rlhf_assets.serving.log.LOG_SCHEMA``; Parquet or JSONL, ``.jsonl.gz`` too). Where
``score`` or ``embedding`` is missing and the row has its ``prompt`` and ``response``, it is computed exactly as the
service does — the same tokenisation, forward pass and prompt embedding (``ServedModel``) of the model named by
``--model`` (the registry's production alias, ``latest``, an artifact id or a directory) — and a compared pair's
missing ``p_a`` through that model's calibration. The thresholds are calibrated on the reference for windows of the
checked size (the whole current file unless ``--window``; its most recent rows when larger). Bad input raises
:class:`DriftInputError` with a message naming the file and what is wrong (the command exits 2). No Dagster here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.evaluation.drift import (
    DriftInputError,
    DriftSettings,
    Sample,
    calibrate,
    check,
)

EMBED_DIM = 32  # rlhf_assets.serving.engine.EMBED_DIM (not imported: that pulls torch in for files that need none)
BATCH = 64


def read_rows(path: Path) -> pl.DataFrame:
    """A serving-log file: Parquet, or JSON lines (optionally gzipped)."""
    path = Path(path)
    if not path.is_file():
        raise DriftInputError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            frame = pl.read_parquet(path)
        elif name.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")):
            data = path.read_bytes()
            if name.endswith(".gz"):
                import gzip

                data = gzip.decompress(data)
            frame = pl.read_ndjson(data) if data.strip() else pl.DataFrame()
        else:
            raise DriftInputError(f"{path}: unknown file type (Parquet or JSONL: .parquet, .jsonl, .jsonl.gz)")
    except DriftInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error is bad input, named with its file
        raise DriftInputError(f"{path}: cannot read it: {exc}") from None
    if frame.height == 0:
        raise DriftInputError(f"{path}: no rows")
    return frame


@dataclass
class ModelSource:
    """The reward model that fills missing scores, embeddings and p_a: loaded on first use only."""

    spec: str = "production"
    root: str | None = None
    _model: Any = None

    def load(self, why: str) -> Any:
        if self._model is None:
            self._model = load_served_model(self.spec, self.root, why)
        return self._model


def load_served_model(spec: str, root: str | None, why: str) -> Any:
    """The ``ServedModel`` for ``production`` (the registry's alias, with its calibration), ``latest`` / an id
    (with the newest calibration made for it, as the service pins a version) or an artifact directory."""
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.registry.artifacts import ArtifactNotFound, ArtifactStore
    from rlhf_assets.storage import storage_from_env

    storage = storage_from_env(root)
    store = ArtifactStore(storage)
    calibration_id = None
    try:
        if spec == "production":
            holder = Registry(storage).current("production")
            artifacts = (holder or {}).get("artifacts") or {}
            if not artifacts.get("reward_model"):
                raise DriftInputError(f"no model to compute {why}: the registry at {storage.uri} has no production "
                                      "alias (pass --model latest|ID|DIR)")
            artifact_id, calibration_id = artifacts["reward_model"], artifacts.get("calibration")
            directory = store.get(artifact_id)
        elif spec != "latest" and Path(spec).is_dir():
            directory, artifact_id = Path(spec), Path(spec).name
        else:
            artifact_id = store.resolve_id(spec, kind="reward_model")
            kind = store.manifest(artifact_id).get("kind")
            if kind not in ("reward_model", "judge_reward_model"):
                raise DriftInputError(f"--model {spec}: artifact {artifact_id[:12]}… is a {kind}, not a reward model")
            directory = store.get(artifact_id)
            made_for = [r.id for r in store.list("calibration")
                        if artifact_id in (store.manifest(r.id).get("parent_ids") or [])]
            calibration_id = made_for[0] if made_for else None
        calibrator = None
        if calibration_id:
            doc = json.loads((store.get(calibration_id) / "calibration.json").read_text())
            calibrator = doc.get("calibrator")
    except ArtifactNotFound as exc:
        raise DriftInputError(f"no model to compute {why}: {exc}") from None
    from rlhf_assets.serving.engine import ServedModel

    return ServedModel(directory, artifact_id, calibrator=calibrator, calibration_id=calibration_id)


def _texts(frame: pl.DataFrame) -> bool:
    return {"prompt", "response"} <= set(frame.columns)


def _null_mask(frame: pl.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.ones(frame.height, dtype=bool)
    return frame[column].is_null().to_numpy()


def complete(frame: pl.DataFrame, source: ModelSource, label: str) -> pl.DataFrame:
    """``frame`` with missing scores and embeddings computed from the texts, and compared pairs' missing ``p_a``
    from their scores, with the model of ``source`` (exactly as the service computes them)."""
    if "embedding" in frame.columns and frame["embedding"].dtype != pl.Array(pl.Float32, EMBED_DIM):
        try:
            frame = frame.with_columns(pl.col("embedding").cast(pl.List(pl.Float32)))
        except pl.exceptions.PolarsError as exc:
            raise DriftInputError(f"{label}: embedding must be a list of {EMBED_DIM} numbers: {exc}") from None
        lengths = frame["embedding"].list.len().drop_nulls().unique().to_list()
        if any(n != EMBED_DIM for n in lengths):
            raise DriftInputError(f"{label}: embedding must have {EMBED_DIM} values per row, got {sorted(lengths)}")
    if "score" in frame.columns:
        if not frame["score"].dtype.is_numeric():
            raise DriftInputError(f"{label}: score must be numeric, got {frame['score'].dtype}")
        frame = frame.with_columns(pl.col("score").cast(pl.Float64))
    no_score, no_emb = _null_mask(frame, "score"), _null_mask(frame, "embedding")
    has_text = np.zeros(frame.height, dtype=bool)
    if _texts(frame):
        has_text = (~frame["prompt"].is_null() & ~frame["response"].is_null()).to_numpy()
    if (no_score & ~has_text).any():
        missing = ("score" if "score" not in frame.columns else f"score in {int(no_score.sum())} rows")
        raise DriftInputError(f"{label}: {missing} missing and no prompt and response to compute it from "
                              f"(columns: {', '.join(frame.columns)})")
    todo = np.flatnonzero((no_score | no_emb) & has_text)
    if todo.size:
        model = source.load(f"the missing scores/embeddings of {label}")
        prompts, responses = frame["prompt"].to_list(), frame["response"].to_list()
        seqs = [model.encode(prompts[i], responses[i]) for i in todo]
        order = np.argsort([-len(s.input_ids) for s in seqs], kind="stable")  # little padding per batch
        scores = np.empty(len(seqs))
        emb = np.empty((len(seqs), EMBED_DIM), dtype=np.float32)
        for start in range(0, len(seqs), BATCH):
            part = order[start:start + BATCH]
            s, e = model.run([seqs[i] for i in part])
            scores[part], emb[part] = s, e
        old_scores = (frame["score"].to_numpy().astype(np.float64) if "score" in frame.columns
                      else np.full(frame.height, np.nan))
        new_scores = old_scores.copy()
        fill_score = no_score[todo]
        new_scores[todo[fill_score]] = scores[fill_score]
        old_emb = (frame["embedding"].to_list() if "embedding" in frame.columns else [None] * frame.height)
        for j, i in enumerate(todo):
            if old_emb[i] is None:
                old_emb[i] = emb[j].tolist()
        frame = frame.with_columns(pl.Series("score", new_scores, dtype=pl.Float64),
                                   pl.Series("embedding", old_emb, dtype=pl.List(pl.Float32)))
    return _complete_pairs(frame, source, label)


def _complete_pairs(frame: pl.DataFrame, source: ModelSource, label: str) -> pl.DataFrame:
    """Compared pairs (a side-a row followed by its side-b row of the same request) without ``p_a``: p from the
    margin through the model's calibration, as /v1/compare computes it."""
    if "side" not in frame.columns:
        return frame
    sides = frame["side"].to_list()
    requests = frame["request_id"].to_list() if "request_id" in frame.columns else [None] * frame.height
    p_a = frame["p_a"].cast(pl.Float64).to_list() if "p_a" in frame.columns else [None] * frame.height
    scores = frame["score"].to_list()
    pairs = [(i, i + 1) for i in range(frame.height - 1)
             if sides[i] == "a" and sides[i + 1] == "b" and requests[i] == requests[i + 1] and p_a[i] is None]
    if not pairs:
        return frame if "p_a" in frame.columns else frame.with_columns(pl.lit(None, pl.Float64).alias("p_a"))
    model = source.load(f"the compared pairs' p_a of {label}")
    p = model.probability(np.array([scores[a] - scores[b] for a, b in pairs]))
    for (a, b), value in zip(pairs, p):
        p_a[a] = p_a[b] = float(value)
    return frame.with_columns(pl.Series("p_a", p_a, dtype=pl.Float64))


def to_sample(frame: pl.DataFrame, source: ModelSource, label: str) -> Sample:
    try:
        return Sample.from_log(complete(frame, source, label))
    except DriftInputError as exc:
        message = str(exc)
        raise DriftInputError(message if message.startswith(label) else f"{label}: {message}") from None


def run_check(reference: Path, current: Path, *, model: str = "production", root: str | None = None,
              settings: DriftSettings | None = None, window: int | None = None) -> dict[str, Any]:
    """Calibrate on the reference for the checked window's size, check the window (the current file's last
    ``window`` rows; all of them by default, at most half the reference) and return
    ``{"alarm", "window", "tests": [{"name", "statistic", "threshold", "alarm", …}], "calibration", "rows"}``."""
    base = settings or DriftSettings()
    source = ModelSource(model, root)
    ref_rows, cur_rows = read_rows(reference), read_rows(current)
    largest = ref_rows.height // 2
    size = window if window is not None else min(cur_rows.height, largest)
    if size > cur_rows.height:
        raise DriftInputError(f"current {current}: --window {size} but the file has {cur_rows.height} rows")
    if size < base.min_window:
        raise DriftInputError(f"current {current}: a window of {size} rows is below min_window={base.min_window}"
                              + (f" (the reference has {ref_rows.height} rows: windows are at most half of it)"
                                 if size == largest else ""))
    if size > largest:
        raise DriftInputError(f"reference {reference}: {ref_rows.height} rows are too few for windows of {size} "
                              f"(at least {2 * size} needed)")
    ref = to_sample(ref_rows, source, f"reference {reference}")
    cur = to_sample(cur_rows.tail(size), source, f"current {current}")
    pair_window = min(base.pair_window, max(cur.n_pairs, 10), max(ref.n_pairs // 2, 10))
    try:
        s = base.with_overrides(window=size, pair_window=pair_window)
    except ValueError as exc:
        raise DriftInputError(str(exc)) from None
    calibration = calibrate(ref, s)
    result = check(calibration, ref, cur, s)
    out = result.to_dict()
    out["rows"] = {"reference": ref.n, "current": cur_rows.height, "checked": result.window}
    out["calibration"]["seconds"] = calibration.seconds
    return out


def format_result(out: dict[str, Any]) -> str:
    lines = [f"{'ALARM' if out['alarm'] else 'no alarm'}: window of {out['window']} items "
             f"({out['rows']['current']} in the file, reference {out['rows']['reference']}); "
             f"{out['calibration']['rule']}",
             f"{'test':24} {'statistic':>11} {'threshold':>11}  outcome"]
    for t in out["tests"]:
        if not t["measured"]:
            lines.append(f"{t['name']:24} {'-':>11} {'-':>11}  not measured: {t['note']}")
            continue
        lines.append(f"{t['name']:24} {t['statistic']:>11.4g} {t['threshold']:>11.4g}  "
                     f"{'ALARM' if t['alarm'] else 'ok'}")
    return "\n".join(lines)
