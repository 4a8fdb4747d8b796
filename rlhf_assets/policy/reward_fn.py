"""The reward PPO optimises: the calibrated reward-model score of a (prompt, response) text.

Calibration maps a score MARGIN to P(A ≻ B) (reward/calibration.py). On a single response the calibrated score is
the margin's log-odds scale applied to the raw score: Platt's p = σ(a·(r_A − r_B) + b) makes a·r a reward whose
differences are calibrated log-odds (b is the A/B position bias, which a single response does not have). For
isotonic calibration, a is the slope of a least-squares fit of logit(p) on the margin over its breakpoints.
Without a calibration the scale is 1 (the raw Bradley–Terry score).

Length debiasing (``PPOConfig.length_debias``, a mitigation of reward hacking through length): the reward's linear
length component, fitted by least squares of the calibrated score on the response length in words over the
validation split's responses (both sides of every pair), is subtracted — ``r − b·(len − mean len)`` — so a response
gains nothing from being shorter or longer than the reward model's data says length is worth on its own. Words, not
tokens: the reward model and the policy have different tokenizers and the reward reads text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_assets.reward.artifact import RewardScorer


def calibrated_scale(calibrator: Mapping[str, Any] | None) -> float:
    if not calibrator:
        return 1.0
    method = calibrator.get("method")
    if method == "platt":
        return float(calibrator["slope"])
    if method == "isotonic":
        x = np.asarray(calibrator["x_thresholds"], dtype=np.float64)
        p = np.clip(np.asarray(calibrator["y_thresholds"], dtype=np.float64), 0.01, 0.99)
        if x.size < 2 or np.ptp(x) == 0:
            return 1.0
        slope = float(np.polyfit(x, np.log(p / (1 - p)), 1)[0])
        return slope if math.isfinite(slope) and slope > 0 else 1.0
    raise ValueError(f"unknown calibration method {method!r}")


def response_words(responses: Sequence[str]) -> np.ndarray:
    return np.array([len(r.split()) for r in responses], dtype=np.float64)


def fit_length_debias(score: Callable[[Sequence[str], Sequence[str]], np.ndarray], prompts: Sequence[str],
                      responses: Sequence[str]) -> dict[str, float]:
    """Least squares of ``score(prompts, responses)`` on the response length in words: {"coef" (reward per word),
    "mean_length", "r2", "n"}. Fewer than 3 responses, or all of one length: ValueError."""
    lengths = response_words(responses)
    if len(lengths) < 3 or np.ptp(lengths) == 0:
        raise ValueError(f"length debiasing needs ≥ 3 responses of different lengths; got {len(lengths)}")
    scores = np.asarray(score(list(prompts), list(responses)), dtype=np.float64)
    coef, intercept = np.polyfit(lengths, scores, 1)
    resid = scores - (coef * lengths + intercept)
    total = float(((scores - scores.mean()) ** 2).sum())
    return {"coef": float(coef), "mean_length": float(lengths.mean()),
            "r2": 1.0 - float((resid ** 2).sum()) / total if total > 0 else 0.0, "n": int(len(lengths))}


class ProxyReward:
    """``scale · r(prompt, response)``, minus ``length_debias["coef"] · (words − mean_length)`` when a length fit
    is set; ``no_eos_penalty`` is added when a response hit the length cap."""

    def __init__(self, scorer: RewardScorer, calibrator: Mapping[str, Any] | None = None,
                 no_eos_penalty: float = 0.0, batch_size: int = 64,
                 length_debias: Mapping[str, float] | None = None):
        self.scorer, self.scale = scorer, calibrated_scale(calibrator)
        self.no_eos_penalty, self.batch_size = float(no_eos_penalty), batch_size
        self.length_debias = dict(length_debias) if length_debias else None

    def calibrated(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The calibrated score, without length debiasing."""
        return self.scale * self.scorer.score(list(prompts), list(responses), self.batch_size)

    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        scores = self.calibrated(prompts, responses)
        if self.length_debias:
            d = self.length_debias
            scores = scores - d["coef"] * (response_words(responses) - d["mean_length"])
        return scores

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]) -> np.ndarray:
        scores = self.raw(prompts, responses)
        return scores + self.no_eos_penalty * (~np.asarray(ended, dtype=bool))


RewardLike = Any  # ProxyReward | RewardScorer | Callable[[prompts, responses], array]


def as_reward_fn(reward: RewardLike) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """(prompts, responses) → calibrated scores, from a ``ProxyReward`` (its ``raw``: no EOS penalty), a
    ``RewardScorer`` (scale 1: the raw Bradley–Terry score) or any such callable."""
    if isinstance(reward, ProxyReward):
        return reward.raw
    if isinstance(reward, RewardScorer):
        return ProxyReward(reward).raw
    if callable(reward):
        return lambda prompts, responses: np.asarray(reward(list(prompts), list(responses)), dtype=np.float64)
    raise ValueError(f"reward must be a ProxyReward, a RewardScorer or a callable(prompts, responses); "
                     f"got {type(reward).__name__}")
