"""Three-outcome verdicts on a measured value with an interval: ``pass`` (the whole interval is on the right side
of the threshold), ``fail`` (the whole interval is on the wrong side), ``inconclusive`` (it straddles).

A point estimate against a threshold is a coin toss when the estimate's noise is as large as the margin; acting on
the interval instead means a release is only rejected on evidence that it is bad and only promoted on evidence
that it is good. Missing evidence (no value or no interval) is ``not measured``, which the gates treat as failing
closed. Also: the seeded bootstrap resampling that every interval in the release path uses
(:func:`resample_rows`, :func:`resampled`), and percentile / bias-corrected intervals on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

PASS, FAIL, INCONCLUSIVE, NOT_MEASURED = "pass", "fail", "inconclusive", "not measured"
Outcome = Literal["pass", "fail", "inconclusive", "not measured"]
#: ``>=`` / ``>``: higher is better (accuracy, correlation, uplift); ``<=``: lower is better (ECE, KL).
Comparison = Literal[">=", ">", "<="]
#: Resampled values per array in one bootstrap chunk: bounds the memory of a vectorised bootstrap.
BOOT_CHUNK_VALUES = 2_000_000


def _finite(x: Any) -> bool:
    return x is not None and not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def outcome(ci_low: float | None, ci_high: float | None, threshold: float, comparison: Comparison) -> Outcome:
    """The outcome of an interval [ci_low, ci_high] against ``threshold``."""
    if not (_finite(ci_low) and _finite(ci_high)):
        return NOT_MEASURED
    lo, hi = float(min(ci_low, ci_high)), float(max(ci_low, ci_high))
    if comparison == ">=":
        return PASS if lo >= threshold else FAIL if hi < threshold else INCONCLUSIVE
    if comparison == ">":
        return PASS if lo > threshold else FAIL if hi <= threshold else INCONCLUSIVE
    if comparison == "<=":
        return PASS if hi <= threshold else FAIL if lo > threshold else INCONCLUSIVE
    raise ValueError(f"comparison must be one of >=, >, <=; got {comparison!r}")


def resample_rows(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The row indices of ``n_boot`` seeded bootstrap resamples of ``n`` rows, in chunks of shape (b, n) that hold
    at most :data:`BOOT_CHUNK_VALUES` indices (at least one resample). One generator, drawn row after row, so the
    same (n, n_boot, seed) gives the same resamples whoever consumes them — one stream behind every bootstrap."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, BOOT_CHUNK_VALUES // n))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def resampled(statistic: Callable[..., Any], arrays: Sequence[np.ndarray | None], n_boot: int,
              seed: int) -> np.ndarray:
    """``statistic`` on the ``n_boot`` resamples of :func:`resample_rows`, vectorised: it receives every array
    resampled to (b, n) — the same rows for each; a None array stays None — and returns b values (or b rows of
    values); they come back concatenated as float64, (n_boot,) or (n_boot, k). Empty when ``n_boot`` is 0."""
    n = next(len(a) for a in arrays if a is not None)
    out = [np.asarray(statistic(*(None if a is None else a[idx] for a in arrays)), dtype=np.float64)
           for idx in resample_rows(n, n_boot, seed)]
    return np.concatenate(out) if out else np.empty(0)


def _resampled(statistic: Callable[..., float], arrays: Sequence[Any], n_boot: int, seed: int) -> np.ndarray | None:
    """The finite values of ``statistic`` on ``n_boot`` seeded resamples of the rows (the same index for every
    array); None when there are fewer than 2 rows or fewer than half the resamples are finite."""
    data = [np.asarray(a) for a in arrays]
    n = len(data[0]) if data else 0
    if any(len(a) != n for a in data):
        raise ValueError("bootstrap: arrays differ in length")
    if n < 2 or n_boot < 1:
        return None

    def one_by_one(*rows: np.ndarray) -> list[float]:
        return [statistic(*(a[i] for a in rows)) for i in range(len(rows[0]))]

    stats = resampled(one_by_one, data, n_boot, seed)
    stats = stats[np.isfinite(stats)]
    return stats if stats.size >= n_boot / 2 else None


def bootstrap_ci(statistic: Callable[..., float], arrays: Sequence[Any], *, n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval of ``statistic(*arrays)``, resampling rows (the same index for every
    array). Resamples where the statistic is not finite are dropped; (nan, nan) when fewer than half survive or
    there are fewer than 2 rows."""
    stats = _resampled(statistic, arrays, n_boot, seed)
    if stats is None:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def bias_corrected_ci(statistic: Callable[..., float], arrays: Sequence[Any], *, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95, floor: float | None = None) -> tuple[float, float, float]:
    """(bias-corrected estimate, interval low, interval high) of a statistic whose plug-in estimate is biased, by
    the bootstrap's own estimate of that bias: estimate = 2θ̂ − mean(θ*), interval = the basic (reverse-percentile)
    bootstrap [2θ̂ − q_hi, 2θ̂ − q_lo]; ``floor`` clips all three (ECE cannot be negative).

    Why: binned ECE adds up absolute gaps, so noise alone makes it positive. On 289 perfectly calibrated pairs the
    15-bin plug-in ECE averages ≈ 0.07, and a percentile interval (which resamples that noise once more) lies wholly
    above 0.05 in most samples — a gate on it would fail every honest model at that size. The corrected interval
    fails none of them and still fails clearly miscalibrated ones (rlhf_assets_tests/evaluation/test_evidence.py).
    """
    stats = _resampled(statistic, arrays, n_boot, seed)
    point = float(statistic(*(np.asarray(a) for a in arrays))) if stats is not None else float("nan")
    if stats is None or not math.isfinite(point):
        return float("nan"), float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    q_lo, q_hi = np.quantile(stats, [alpha, 1.0 - alpha])
    out = [2 * point - float(stats.mean()), 2 * point - float(q_hi), 2 * point - float(q_lo)]
    if floor is not None:
        out = [max(floor, x) for x in out]
    return out[0], out[1], out[2]
