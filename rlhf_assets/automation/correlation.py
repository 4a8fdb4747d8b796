"""Does the served reward model still agree with the humans auditing it?

Human audits land under ``landing/audits/date=…/`` in the comparison schema (prompt, response_a, response_b, label,
annotator_id, …). Each audited pair is joined with what the service scored for the same texts (the serving log's
compared pairs, matched by the sha256 of the prompt and of both responses, in either order). Per served model
version, over the newest ``audit_window`` audited pairs: Spearman between the humans' preference (the share of
annotators preferring one side, ties ½) and the model's calibrated P(that side wins), with a bootstrap interval, and
the pairwise agreement (the model's favourite is the humans' majority), ties left out.

Audited pairs drawn by the stratified audit sampler (annotation/audit.py) carry their inclusion probability π: each
counts with weight 1/π (Horvitz–Thompson; weighted mid-ranks, weighted Pearson of the ranks), so oversampling a
stratum does not tilt the estimate toward it; pairs audited without a known π (e.g. simulated audits) get the mean
weight of those with one (as if drawn uniformly). Without any sampled pair, every weight is 1: plain Spearman.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets.storage import Storage

AUDITS = "audits"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


AUDIT_SCHEMA: dict[str, pl.DataType] = {"prompt_sha256": pl.String(), "first": pl.String(), "second": pl.String(),
                                        "prefers_first": pl.Float64(), "annotator_id": pl.String(),
                                        "created_at": pl.String()}


def parse_audits(data: bytes) -> pl.DataFrame:
    """The audit judgements of one landing file (JSON lines, AUDIT_SCHEMA); lines that are not comparison records
    are skipped (the audit pipeline's validation reports those)."""
    rows: list[dict[str, Any]] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            a, b = _sha(r["response_a"]), _sha(r["response_b"])
            label = r["label"]
            prompt = _sha(r["prompt"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not a comparison record
        if label not in ("a", "b", "tie"):
            continue
        a_first = a <= b
        prefers_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[label]
        rows.append({"prompt_sha256": prompt, "first": a if a_first else b, "second": b if a_first else a,
                     "prefers_first": prefers_a if a_first else 1.0 - prefers_a,
                     "annotator_id": str(r.get("annotator_id", "")), "created_at": str(r.get("created_at", ""))})
    return pl.DataFrame(rows, schema=AUDIT_SCHEMA)


def read_audits(storage: Storage, day: str | None = None) -> pl.DataFrame:
    """Every audit judgement in the landing zone (of ``day`` only, when given), read file by file: prompt_sha256,
    first/second (the responses' sha256 in sorted order), prefers_first (1, 0, or ½ for a tie), annotator_id,
    created_at. What runs every minute reads automation/audit_index.py's incremental index instead."""
    base = storage.path("landing", AUDITS)
    frames = [pl.DataFrame(schema=AUDIT_SCHEMA)]
    if base.exists():
        for folder in sorted(base.iterdir(), key=lambda p: p.name):
            if not folder.name.startswith("date=") or (day is not None and folder.name != f"date={day}"):
                continue
            frames.extend(parse_audits(storage.read_bytes(path)) for path in storage.list_files(folder))
    return pl.concat(frames)


def served_pairs(log: pl.DataFrame) -> pl.DataFrame:
    """The compared pairs in a serving log, oriented like the audits: prompt_sha256, first, second,
    p_first (the model's calibrated P(first wins)), artifact_id, release, alias, time (of its latest serving)."""
    compare = log.filter(pl.col("endpoint") == "compare") if "endpoint" in log.columns else log.head(0)
    if compare.height == 0:
        return pl.DataFrame(schema={"prompt_sha256": pl.String, "first": pl.String, "second": pl.String,
                                    "p_first": pl.Float64, "artifact_id": pl.String, "release": pl.String,
                                    "alias": pl.String, "time": pl.Datetime("us", "UTC")})
    a = compare.filter(pl.col("side") == "a").select("request_id", "item", "prompt_sha256", "p_a", "artifact_id",
                                                      "release", "alias", "time", pl.col("response_sha256").alias("a"))
    b = compare.filter(pl.col("side") == "b").select("request_id", "item", pl.col("response_sha256").alias("b"))
    pairs = a.join(b, on=["request_id", "item"], how="inner")
    a_first = pl.col("a") <= pl.col("b")
    return (pairs.select(
        "prompt_sha256",
        pl.when(a_first).then(pl.col("a")).otherwise(pl.col("b")).alias("first"),
        pl.when(a_first).then(pl.col("b")).otherwise(pl.col("a")).alias("second"),
        pl.when(a_first).then(pl.col("p_a")).otherwise(1.0 - pl.col("p_a")).alias("p_first"),
        "artifact_id", "release", "alias", "time")
        .sort("time").unique(["prompt_sha256", "first", "second", "artifact_id"], keep="last"))


@dataclass
class Correlation:
    artifact_id: str
    release: str | None
    alias: str | None
    n: int
    spearman: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    agreement: float | None = None
    baseline: float | None = None  # the release's test-split Spearman (rm_calibration)

    @property
    def measured(self) -> bool:
        return self.spearman is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlations(audits: pl.DataFrame, served: pl.DataFrame, settings: AutomationSettings,
                 seed: int = 0, weights: pl.DataFrame | None = None) -> list[Correlation]:
    """Per served model version, over its newest ``audit_window`` audited pairs; ``weights`` (prompt_sha256, first,
    second, weight = 1/π: annotation/audit.py's audit_weights) reweights the pairs the audit sampler drew."""
    if audits.height == 0 or served.height == 0:
        return []
    humans = audits.group_by("prompt_sha256", "first", "second").agg(
        pl.col("prefers_first").mean().alias("human"), pl.col("created_at").max().alias("audited_at"),
        pl.len().alias("labels"))
    joined = humans.join(served, on=["prompt_sha256", "first", "second"], how="inner")
    if weights is not None and weights.height:
        joined = joined.join(weights, on=["prompt_sha256", "first", "second"], how="left")
        joined = joined.with_columns(pl.col("weight").fill_null(joined["weight"].mean()).fill_null(1.0))
    else:
        joined = joined.with_columns(pl.lit(1.0).alias("weight"))
    out = []
    # audit times are often to the second (hundreds of pairs tie): the pair's hashes break ties, so "the newest
    # audit_window" is the same set on every evaluation of the same audits, whatever order they were read in
    ordered = joined.sort("audited_at", "prompt_sha256", "first", "second", "artifact_id")
    for key, group in ordered.group_by("artifact_id", maintain_order=True):
        group = group.tail(settings.audit_window)
        last = group.row(-1, named=True)
        c = Correlation(key[0], last["release"], last["alias"], group.height)
        if group.height >= settings.min_audits:
            human, model, w = group["human"].to_numpy(), group["p_first"].to_numpy(), group["weight"].to_numpy()
            c.spearman, c.ci_low, c.ci_high = spearman_interval(human, model, settings.n_boot, settings.confidence,
                                                                seed, weights=w)
            decided = human != 0.5
            c.agreement = (float(np.average((model[decided] > 0.5) == (human[decided] > 0.5), weights=w[decided]))
                           if decided.any() else None)
        out.append(c)
    return out


def weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mid-ranks where each value counts ``w`` times: the weight below it plus half the weight of its ties
    (with equal weights, the average ranks up to an affine map)."""
    values, inverse = np.unique(x, return_inverse=True)
    mass = np.bincount(inverse, weights=w, minlength=len(values))
    below = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
    return (below + mass / 2.0)[inverse]


def weighted_spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Spearman's rho of a weighted sample (weighted Pearson of weighted mid-ranks); nan where undefined."""
    if w is None or np.allclose(w, w[0]):
        value = spearmanr(x, y)[0]
        return float(value) if np.isfinite(value) else float("nan")
    rx, ry = weighted_ranks(x, w), weighted_ranks(y, w)
    mx, my = np.average(rx, weights=w), np.average(ry, weights=w)
    cov = np.average((rx - mx) * (ry - my), weights=w)
    var = np.average((rx - mx) ** 2, weights=w) * np.average((ry - my) ** 2, weights=w)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")


def spearman_interval(x: np.ndarray, y: np.ndarray, n_boot: int, confidence: float, seed: int = 0,
                      weights: np.ndarray | None = None) -> tuple[float | None, float | None, float | None]:
    """Spearman's rho (weighted by ``weights`` when given) and a percentile bootstrap interval over pairs
    (seeded); None where it is undefined."""
    from rlhf_assets.evaluation.evidence import bootstrap_ci

    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)

    def rho(a: np.ndarray, b: np.ndarray, v: np.ndarray) -> float:
        return weighted_spearman(a, b, v)

    point = rho(x, y, w)
    if not np.isfinite(point):
        return None, None, None
    low, high = bootstrap_ci(rho, [x, y, w], n_boot=n_boot, confidence=confidence, seed=seed)
    return point, (low if np.isfinite(low) else None), (high if np.isfinite(high) else None)


def baseline(storage: Storage, release: str | None) -> float | None:
    """The release's own human–RM Spearman on its test split (rm_calibration's reference), if stored."""
    if not release:
        return None
    from rlhf_assets.references import read_reference

    try:
        ref = read_reference(storage, "rm_calibration", release)
    except (OSError, ValueError, FileNotFoundError):
        return None
    value = (getattr(ref, "human_correlation", None) or {}).get("spearman")
    return float(value) if isinstance(value, (int, float)) else None


def live_correlations(storage: Storage, settings: AutomationSettings, day: str | None = None) -> list[Correlation]:
    """Correlations per served version now: the audits (of ``day``; all of them through the incremental audit
    index) against the served-pairs index, weighted by the audit samples' 1/π, each with its release's baseline."""
    from rlhf_assets.annotation.audit import audit_weights
    from rlhf_assets.automation.audit_index import indexed_audits
    from rlhf_assets.automation.served_index import read_index

    audits = indexed_audits(storage) if day is None else read_audits(storage, day)
    results = correlations(audits, read_index(storage), settings, weights=audit_weights(storage))
    for c in results:
        c.baseline = baseline(storage, c.release)
    return results
