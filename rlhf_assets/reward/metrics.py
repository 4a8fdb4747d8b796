"""Metrics of pairwise preference probabilities: accuracy, ROC AUC, ECE, log-loss, Brier.

Convention: ``p`` is the predicted probability that the first response (A / chosen) is preferred; ``y`` is 1 when
it was, 0 when not (soft targets in [0, 1] are allowed for log-loss and Brier).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def margin_probability(margin: np.ndarray) -> np.ndarray:
    """P(A ≻ B) = σ(r_A − r_B) under Bradley–Terry."""
    return expit(np.asarray(margin, dtype=np.float64))


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Share of pairs where the model prefers the preferred response; a tie (p == 0.5) counts as half."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    hard = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
    return float(np.mean(np.where(y >= 0.5, hard, 1.0 - hard)))


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of p against hard labels (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    y = (np.asarray(y, float) >= 0.5).astype(int)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(p, float)))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width bins on [0, 1]: Σ_b (n_b / n) · |mean(y_b) − mean(p_b)|."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    if p.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins))
    return float(gap.sum() / p.size) if count.sum() else float("nan")


def reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin: count, mean predicted probability and observed frequency (NaN for empty bins)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(bins, weights=p, minlength=n_bins) / count
        freq = np.bincount(bins, weights=y, minlength=n_bins) / count
    return {"count": count, "mean_predicted": mean_p, "observed": freq,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def log_loss(p: np.ndarray, y: np.ndarray, eps: float = 1e-12) -> float:
    p = np.clip(np.asarray(p, float), eps, 1 - eps)
    y = np.asarray(y, float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def pairwise_report(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    p = np.asarray(p, float)
    return {"n": int(p.size), "accuracy": accuracy(p, y), "auc": roc_auc(p, y),
            "ece": expected_calibration_error(p, y, n_bins), "log_loss": log_loss(p, y), "brier": brier(p, y)}


def oriented(margin_chosen_minus_rejected: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(p, y) for chosen/rejected pairs shown in a seeded random order, so both classes occur and AUC/ECE are
    meaningful: a flipped pair has p = σ(−margin) and y = 0."""
    margin = np.asarray(margin_chosen_minus_rejected, dtype=np.float64)
    flip = np.random.default_rng(seed).random(margin.size) < 0.5
    return margin_probability(np.where(flip, -margin, margin)), np.where(flip, 0.0, 1.0)
