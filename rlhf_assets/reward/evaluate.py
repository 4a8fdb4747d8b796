"""Pairwise evaluation of a stored reward model: margins, accuracy, AUC, ECE, log-loss."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from rlhf_assets.reward import metrics
from rlhf_assets.reward.artifact import RewardScorer
from rlhf_assets.reward.data import PreferencePair, read_pairs


def _as_pairs(pairs: str | os.PathLike | Iterable[PreferencePair | dict]) -> list[PreferencePair]:
    if isinstance(pairs, (str, os.PathLike)):
        return read_pairs(pairs)
    out = []
    for p in pairs:
        if isinstance(p, PreferencePair):
            out.append(p)
        else:
            out.append(PreferencePair(p.get("prompt", ""), p["chosen"], p["rejected"], float(p.get("target", 1.0)),
                                      float(p.get("weight", 1.0))))
    return out


def score_pairs(scorer: RewardScorer, pairs: str | os.PathLike | Iterable[PreferencePair | dict],
                batch_size: int = 32) -> np.ndarray:
    """Margins r(chosen) − r(rejected), one per pair, in input order."""
    pairs = _as_pairs(pairs)
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs], batch_size)
    rejected = scorer.score(prompts, [p.rejected for p in pairs], batch_size)
    return chosen - rejected


def evaluate_margins(margins: np.ndarray, seed: int = 0) -> dict[str, float]:
    """n, accuracy, auc, ece, log_loss of chosen-vs-rejected margins (pairs in a seeded random order)."""
    p, y = metrics.oriented(np.asarray(margins, dtype=np.float64), seed=seed)
    return {"n": int(p.size), "accuracy": metrics.accuracy(p, y), "auc": metrics.roc_auc(p, y),
            "ece": metrics.expected_calibration_error(p, y), "log_loss": metrics.log_loss(p, y)}


def evaluate_pairs(scorer: RewardScorer, pairs: str | os.PathLike | Iterable[PreferencePair | dict],
                   batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """{"n", "accuracy", "auc", "ece", "log_loss"} of a scorer on preference pairs.

    A pair whose soft ``target`` is below 0.5 says the *rejected* side is the likelier winner; its margin is flipped
    so that every pair is scored against its majority preference.
    """
    pairs = _as_pairs(pairs)
    margins = score_pairs(scorer, pairs, batch_size)
    targets = np.array([p.target for p in pairs])
    return evaluate_margins(np.where(targets < 0.5, -margins, margins), seed=seed)
