"""How well a (calibrated) reward model's preference probabilities hold up: the diagnostics reported beside the
calibrators of :mod:`rlhf_assets.reward.calibration`.

Inputs are in the same *oriented* form: ``p`` is P(A ≻ B) for a pair shown as (A, B), ``y`` is 1 when A was
preferred, 0 when B was (soft targets in [0, 1] are accepted).

- :func:`metric_intervals` — seeded bootstrap intervals of accuracy and (bias-corrected) ECE, for the gates.
- :func:`human_correlation` — Spearman / Pearson between calibrated P(A ≻ B) and the human share preferring A,
  with seeded percentile-bootstrap intervals.
- :func:`slice_accuracy`, :func:`agreement_level`, :func:`length_bucket` — accuracy per slice.
- :func:`reliability_diagram_png` — reliability curves before / after, as PNG bytes for materialization metadata.

No Dagster here; the ``rm_calibration`` asset calls these functions.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlhf_assets.arrays import float_vector
from rlhf_assets.evaluation.evidence import bias_corrected_ci, bootstrap_ci, resampled
from rlhf_assets.jsonsafe import finite_or_none
from rlhf_assets.reward.calibration import N_BINS
from rlhf_assets.reward.metrics import accuracy, expected_calibration_error, reliability_bins

# ------------------------------------------------------------------------------------------------ intervals


def metric_intervals(p: Any, y: Any, *, n_boot: int, seed: int, confidence: float,
                     n_bins: int = N_BINS) -> dict[str, Any]:
    """Accuracy and ``n_bins``-bin ECE of the probabilities ``p`` against ``y``, with seeded bootstrap intervals
    (pairs resampled) for the gates.

    Keys: ``accuracy`` with ``accuracy_ci`` (percentile bootstrap: accuracy is a mean, unbiased); ``ece`` (the plug-in
    estimate), ``ece_debiased`` and ``ece_ci`` (bias-corrected bootstrap, :func:`evidence.bias_corrected_ci`: the
    plug-in ECE is biased upward by noise alone, by about as much as a 0.05 threshold at a few hundred pairs).
    Intervals are ``[low, high]``, ``[None, None]`` when not measurable.
    """
    pp, yy = float_vector(p, "p"), float_vector(y, "y")
    if pp.size != yy.size:
        raise ValueError(f"p and y differ in length: {pp.size} vs {yy.size}")
    opts = {"n_boot": int(n_boot), "seed": int(seed), "confidence": float(confidence)}
    ece = lambda a, b: expected_calibration_error(a, b, n_bins)  # noqa: E731
    acc_lo, acc_hi = bootstrap_ci(accuracy, [pp, yy], **opts)
    debiased, ece_lo, ece_hi = bias_corrected_ci(ece, [pp, yy], floor=0.0, **opts)
    return {"accuracy": finite_or_none(accuracy(pp, yy)) if pp.size else None,
            "accuracy_ci": _pair(acc_lo, acc_hi),
            "ece": finite_or_none(ece(pp, yy)) if pp.size else None,
            "ece_debiased": finite_or_none(debiased),
            "ece_ci": _pair(ece_lo, ece_hi)}


def _pair(lo: float, hi: float) -> list[float | None]:
    return [float(lo), float(hi)] if math.isfinite(lo) and math.isfinite(hi) else [None, None]


# ------------------------------------------------------------------------------------------ human agreement


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denom
    return np.clip(np.where(denom > 0, r, np.nan), -1.0, 1.0)


def human_correlation(p_calibrated: Any, human_share_a: Any, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Rank (Spearman) and linear (Pearson) correlation of calibrated P(A ≻ B) with the human share preferring A.

    Each estimate comes with a seeded percentile-bootstrap interval (pairs resampled with replacement, vectorised in
    chunks: :func:`evidence.resampled`). Undefined cases (fewer than 3 pairs, a constant input) give NaN estimates
    and a ``reason`` instead of raising. Keys: n, n_boot, confidence, spearman, spearman_ci_low, spearman_ci_high,
    pearson, pearson_ci_low, pearson_ci_high, reason.
    """
    from scipy.stats import pearsonr, rankdata, spearmanr

    x = float_vector(p_calibrated, "p_calibrated")
    h = float_vector(human_share_a, "human_share_a")
    if x.size != h.size:
        raise ValueError(f"p_calibrated and human_share_a differ in length: {x.size} vs {h.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(h))):
        raise ValueError("p_calibrated and human_share_a must be finite (drop pairs without human labels first)")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0; got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "n_boot": int(n_boot), "confidence": float(confidence)}
    nan = float("nan")
    for key in ("spearman", "pearson"):
        out.update({key: nan, f"{key}_ci_low": nan, f"{key}_ci_high": nan})

    reason = None
    if n < 3:
        reason = f"need at least 3 pairs for a correlation; got {n}"
    elif np.ptp(x) == 0:
        reason = f"p_calibrated is constant ({x[0]:g}): correlation undefined"
    elif np.ptp(h) == 0:
        reason = f"human_share_a is constant ({h[0]:g}): correlation undefined"
    out["reason"] = reason
    if reason is not None:
        return out

    out["spearman"] = float(spearmanr(x, h).statistic)
    out["pearson"] = float(pearsonr(x, h).statistic)
    if n_boot == 0:
        return out

    def both(xb: np.ndarray, hb: np.ndarray) -> np.ndarray:
        return np.stack([_rowwise_pearson(rankdata(xb, axis=1), rankdata(hb, axis=1)), _rowwise_pearson(xb, hb)],
                        axis=1)

    boots = resampled(both, [x, h], int(n_boot), seed)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    for key, col in (("spearman", boots[:, 0]), ("pearson", boots[:, 1])):
        if np.isnan(col).all():  # every resample constant: cannot happen unless n is tiny
            continue
        lo, hi = np.nanpercentile(col, [alpha, 100.0 - alpha])
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    return out


# ------------------------------------------------------------------------------------------------- slices

AGREEMENT_LEVELS = ("unanimous", "strong", "split")
_AGREEMENT_TOL = 1e-9


def agreement_level(share_a: Any) -> np.ndarray:
    """Label each pair by how much its annotators agreed, from the share preferring A.

    ``unanimous`` when the share is 0 or 1, ``strong`` when ≥ 0.8 or ≤ 0.2, else ``split``.
    """
    s = float_vector(share_a, "share_a")
    if not np.all(np.isfinite(s)) or (s.size and (s.min() < 0.0 or s.max() > 1.0)):
        raise ValueError("share_a must hold finite shares in [0, 1]")
    extreme = np.maximum(s, 1.0 - s)
    return np.where(extreme >= 1.0 - _AGREEMENT_TOL, "unanimous",
                    np.where(extreme >= 0.8 - _AGREEMENT_TOL, "strong", "split")).astype(str)


def length_bucket(n_chars: Any, edges: tuple[int, ...] = (200, 500, 1000)) -> np.ndarray:
    """Bucket labels for response lengths with half-open intervals: ``<200``, ``200-500`` (200 ≤ n < 500),
    ``500-1000``, ``>=1000`` for the default edges."""
    n = float_vector(n_chars, "n_chars")
    e = [float(v) for v in edges]
    if not e or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be a non-empty, strictly increasing sequence; got {tuple(edges)}")
    if np.isnan(n).any():
        raise ValueError("n_chars contains NaN")
    fmt = [f"{v:g}" for v in e]
    labels = np.array([f"<{fmt[0]}"] + [f"{a}-{b}" for a, b in zip(fmt, fmt[1:])] + [f">={fmt[-1]}"])
    return labels[np.searchsorted(np.asarray(e), n, side="right")]


def _slice_order(value: str) -> tuple:
    if value in AGREEMENT_LEVELS:
        return (0, AGREEMENT_LEVELS.index(value), 0.0, value)
    match = re.match(r"^(<|>=)?(-?\d+(?:\.\d+)?)", value)
    if match:
        lower = float("-inf") if match.group(1) == "<" else float(match.group(2))
        return (1, 0, lower, value)
    return (2, 0, 0.0, value)


def slice_accuracy(p: Any, y: Any, slices: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Accuracy (metrics.accuracy: ties count half) and n for every value of every slicing.

    ``slices`` maps a slicing name (e.g. ``"agreement_level"``) to one label per pair. Rows come out per slicing
    in a natural order (agreement levels unanimous → split, length buckets by lower edge, otherwise sorted), each
    ``{"slicing", "value", "n", "share", "accuracy"}``; the n of one slicing sum to len(p).
    """
    p = float_vector(p, "p")
    y = float_vector(y, "y")
    if p.size != y.size:
        raise ValueError(f"p and y differ in length: {p.size} vs {y.size}")
    if np.isnan(p).any() or np.isnan(y).any():
        raise ValueError("p and y must not contain NaN")
    rows: list[dict[str, Any]] = []
    for name, labels in slices.items():
        labels = np.asarray(labels).astype(str).reshape(-1)
        if labels.size != p.size:
            raise ValueError(f"slice {name!r} has {labels.size} labels for {p.size} pairs")
        for value in sorted(np.unique(labels).tolist(), key=_slice_order):
            mask = labels == value
            k = int(mask.sum())
            rows.append({"slicing": str(name), "value": value, "n": k, "share": k / p.size,
                         "accuracy": accuracy(p[mask], y[mask])})
    return rows


# ---------------------------------------------------------------------------------------- reliability plot


def reliability_diagram_png(p_before: Any, p_after: Any, y: Any, n_bins: int = N_BINS, dpi: int = 100) -> bytes:
    """PNG bytes of a reliability diagram: observed frequency vs mean prediction per equal-width bin, before and
    after calibration, against the diagonal; a histogram of predictions beneath; ECEs in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pb, pa, yy = float_vector(p_before, "p_before"), float_vector(p_after, "p_after"), float_vector(y, "y")
    if not (pb.size == pa.size == yy.size):
        raise ValueError(f"p_before, p_after and y differ in length: {pb.size}, {pa.size}, {yy.size}")
    if pb.size == 0:
        raise ValueError("nothing to plot: no predictions")
    for name, arr in (("p_before", pb), ("p_after", pa)):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"{name} must hold probabilities in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")

    ece_b = expected_calibration_error(pb, yy, n_bins)
    ece_a = expected_calibration_error(pa, yy, n_bins)
    fig = Figure(figsize=(5.5, 6.0), dpi=dpi)  # no pyplot: nothing global to close, safe in threads
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    for label, arr, color, marker in (("before (σ(margin))", pb, "tab:red", "o"),
                                      ("after", pa, "tab:blue", "s")):
        bins = reliability_bins(arr, yy, n_bins)
        keep = bins["count"] > 0
        ax.plot(bins["mean_predicted"][keep], bins["observed"][keep], marker=marker, color=color,
                linewidth=1.5, markersize=4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed P(A ≻ B)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    ax.set_title(f"Reliability (n={pb.size}): ECE {ece_b:.3f} → {ece_a:.3f}", fontsize=10)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    hist.hist(pb, bins=edges, color="tab:red", alpha=0.45, label="before")
    hist.hist(pa, bins=edges, color="tab:blue", alpha=0.45, label="after")
    hist.set_xlabel("predicted P(A ≻ B)")
    hist.set_ylabel("pairs")
    hist.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: never on a bar
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()
