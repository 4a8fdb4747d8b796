"""Every release-quality threshold, defined once.

The blocking asset checks (``rm_calibration``'s, ``ppo_policy``'s) and the deployment gates read the same
:class:`ReleaseThresholds` (in Dagster through the ``release_thresholds`` resource), so a check and the gate behind
it can never disagree about a limit. Decision-policy knobs that are not thresholds on a measurement (the canary
share, when to escalate) live with the verdict rules in :mod:`rlhf_assets.evaluation.gates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ReleaseThresholds:
    """What a release's measurements must show. Each limit is reported next to the measured value and its interval."""

    min_rm_test_accuracy: float = 0.6
    """Reward-model pairwise accuracy on the test split (RewardBench-style chance is 0.5)."""
    max_calibrated_ece: float = 0.05
    """Expected calibration error (15 equal-width bins) of the calibrated P(chosen ≻ rejected) on the test split."""
    min_human_rm_correlation: float = 0.3
    """Spearman correlation of the calibrated preference with the share of annotators preferring the same side."""
    min_uplift: float = 0.0
    """The independent judge's off-policy uplift over the behaviour policy must be above this."""
    max_kl: float | None = None
    """Nats, KL(policy ‖ reference) per sequence. None: the release's own PPO ``kl_budget``; a number can only
    tighten it (the effective limit is min(max_kl, kl_budget))."""
    n_bootstrap: int = 1000
    """Bootstrap resamples behind every interval (seeded)."""
    confidence: float = 0.95
    """Two-sided confidence of every interval."""
    seed: int = 0
    """Seed of the bootstrap resampling."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "max_kl" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"{f.name} must be a number; got {v!r}")
        if not 0.0 <= self.min_rm_test_accuracy <= 1.0:
            raise ValueError(f"min_rm_test_accuracy must be in [0, 1]; got {self.min_rm_test_accuracy}")
        if not 0.0 <= self.max_calibrated_ece <= 1.0:
            raise ValueError(f"max_calibrated_ece must be in [0, 1]; got {self.max_calibrated_ece}")
        if not -1.0 <= self.min_human_rm_correlation <= 1.0:
            raise ValueError(f"min_human_rm_correlation must be in [-1, 1]; got {self.min_human_rm_correlation}")
        if self.max_kl is not None and self.max_kl <= 0.0:
            raise ValueError(f"max_kl must be > 0 nats (or None for the PPO budget); got {self.max_kl}")
        if self.n_bootstrap < 100:
            raise ValueError(f"n_bootstrap must be ≥ 100 for an interval worth acting on; got {self.n_bootstrap}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1); got {self.confidence}")

    def kl_limit(self, kl_budget: float | None) -> float | None:
        """The KL limit a release is held to: its own PPO budget, tightened by ``max_kl`` when set."""
        limits = [x for x in (kl_budget, self.max_kl) if x is not None]
        return min(limits) if limits else None
