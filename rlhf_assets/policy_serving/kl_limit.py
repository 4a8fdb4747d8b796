"""Each release's own per-response KL limit: what the runtime guard holds a served response to.

A release's PPO policy was measured by the blocking ``kl_within_budget`` check (policy/kl_check.py): the mean, over
fresh held-out samples, of the per-response log-likelihood ratio to its reference, with an interval — recorded in
its PolicyRef (``measured_kl``). The guard's limit for one response of that release is

    limit = clamp(kl_limit_factor × upper end of the measured mean KL (ci_high, else value),
                  kl_limit_floor, kl_limit_max)

so a release that moved far from its reference (within its budget) is not guarded on its ordinary answers, and one
that stayed close is guarded as soon as a response drifts well beyond what it showed offline. The factor is on the
mean because that is the evidence every release records; single-sample ratios spread around their mean, and the
factor (default 3) leaves room for that spread. A release without that evidence (no
ppo_policy reference for its policy, e.g. promoted by hand) gets ``kl_limit_max``; ``kl_limit`` set is an override:
that limit for every release.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_assets.policy_serving.settings import PolicyServeSettings
from rlhf_assets.references import PolicyRef, read_reference
from rlhf_assets.storage import Storage


@dataclass(frozen=True)
class KLLimit:
    nats: float
    source: str                    # override | release | no evidence
    measured: float | None = None  # the release's measured mean KL bound it was derived from

    def describe(self) -> str:
        if self.source == "release":
            return f"limit {round(self.nats, 3)} (the release's: its measured KL {self.measured:.3g} × factor)"
        return f"limit {round(self.nats, 3)} ({self.source})"


def _kl_evidence(storage: Storage, release: str | None, policy_id: str) -> dict:
    """The release's kl_within_budget record ({value, ci_low, ci_high, limit, …}) when its ppo_policy reference is
    for this policy; else {}."""
    if not release:
        return {}
    try:
        ref = read_reference(storage, "ppo_policy", release)
    except (FileNotFoundError, ValueError, OSError):
        return {}
    if not isinstance(ref, PolicyRef) or ref.artifact_id != policy_id:
        return {}
    return ref.measured_kl or {}


def measured_kl(storage: Storage, release: str | None, policy_id: str) -> float | None:
    """The upper end of the release's measured mean KL, when its ppo_policy reference is for this policy."""
    evidence = _kl_evidence(storage, release, policy_id)
    bound = evidence.get("ci_high")
    bound = evidence.get("value") if bound is None else bound
    return float(bound) if bound is not None else None


def gated_kl_limit(storage: Storage, release: str | None, policy_id: str) -> float | None:
    """The mean-KL limit the release gate held this release's policy to (its PPO budget, or the tighter release
    threshold): the live mean KL the escalation sensor allows it (automation/policy_guard.py)."""
    limit = _kl_evidence(storage, release, policy_id).get("limit")
    return float(limit) if limit is not None else None


def release_kl_limit(storage: Storage, release: str | None, policy_id: str,
                     settings: PolicyServeSettings) -> KLLimit:
    if settings.kl_limit is not None:
        return KLLimit(settings.kl_limit, "override")
    measured = measured_kl(storage, release, policy_id)
    if measured is None:
        return KLLimit(settings.kl_limit_max, "no evidence")
    nats = min(max(settings.kl_limit_factor * max(measured, 0.0), settings.kl_limit_floor), settings.kl_limit_max)
    return KLLimit(nats, "release", measured)
