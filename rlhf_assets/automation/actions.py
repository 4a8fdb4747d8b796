"""What an alarm does, decided from the evidence and the registry's state (pure functions; the sensors act on them).

- the production version's human–RM correlation falls (the interval's upper bound under
  ``min_human_rm_correlation``, or the point estimate ``max_correlation_drop`` below the release's own calibration
  baseline) → **retrain**: a new release partition and a run of the release chain;
- …falls under ``rollback_correlation`` while an earlier release held production → **rollback** to that release
  (the last good one: the production holder before the current one, unless it was itself rolled back from);
- the canary version has served ``canary_min_audits`` audited pairs: its correlation interval wholly at or above the
  threshold and its traffic checked for drift without a persistent alarm → **graduate** it to production; its
  interval wholly below → **end the canary** (rolled back out of canary);
- served traffic drifts persistently (the drift sensor) → **retrain**.

A retrain waits out ``retrain_cooldown_s`` after the previous one (one episode, one release); the other moves change
the aliases, so the same evidence cannot ask for them twice, and their run keys name the registry state they acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from rlhf_assets.automation.correlation import Correlation
from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets.registry.aliases import NOT_A_MOVE

Kind = Literal["retrain", "rollback", "graduate", "end_canary"]


@dataclass
class Action:
    kind: Kind
    trigger: str                 # which sensor and what it saw, in a line
    evidence: dict[str, Any] = field(default_factory=dict)
    release: str | None = None   # rollback: the release to restore; graduate/end_canary: the canary's release

    def run_key(self, registry_seq: int | None) -> str:
        return f"{self.kind}:{self.release or '-'}:{registry_seq or 0}"


def previous_production(history: list[dict[str, Any]], current: str | None) -> str | None:
    """The release that held production before ``current`` (the last good one), or None. A tenure that ended in a
    rollback (the release was rolled back from) is not a good one: returning to it would swing production back and
    forth between two failed releases."""
    moves = [e for e in history if e["alias"] == "production" and e["action"] not in NOT_A_MOVE]
    # each tenure with the move that ended it (None: the one still holding)
    holders = [e["release"] for e, end in pairwise([*moves, None]) if end is None or end["action"] != "rollback"]
    for release in reversed(holders):
        if release != current:
            return release
    return None


def correlation_actions(results: list[Correlation], aliases: dict[str, Any], history: list[dict[str, Any]],
                        settings: AutomationSettings, drift_ok: dict[str, bool]) -> list[Action]:
    """The moves the measured correlations call for (at most one per served version)."""
    production, canary = aliases.get("production"), aliases.get("canary")
    prod_id = ((production or {}).get("artifacts") or {}).get("reward_model")
    canary_id = ((canary or {}).get("artifacts") or {}).get("reward_model")
    actions: list[Action] = []
    for c in results:
        if not c.measured:
            continue
        evidence = c.to_dict()
        if c.artifact_id == prod_id:
            previous = previous_production(history, production["release"])
            if c.ci_high is not None and c.ci_high < settings.rollback_correlation and previous:
                actions.append(Action("rollback", f"human–RM Spearman {c.spearman:.3f} [{c.ci_low:.3f}, "
                                                  f"{c.ci_high:.3f}] of {production['release']} under the rollback "
                                                  f"threshold {settings.rollback_correlation}", evidence, previous))
            elif c.ci_high is not None and c.ci_high < settings.min_human_rm_correlation:
                actions.append(Action("retrain", f"human–RM Spearman {c.spearman:.3f} [{c.ci_low:.3f}, "
                                                 f"{c.ci_high:.3f}] under {settings.min_human_rm_correlation}",
                                      evidence))
            elif c.baseline is not None and c.baseline - c.spearman > settings.max_correlation_drop:
                actions.append(Action("retrain", f"human–RM Spearman {c.spearman:.3f} fell {c.baseline - c.spearman:.3f} "
                                                 f"from the release's baseline {c.baseline:.3f}", evidence))
        elif c.artifact_id == canary_id and c.n >= settings.canary_min_audits:
            if c.ci_low is not None and c.ci_low >= settings.min_human_rm_correlation and drift_ok.get(c.artifact_id):
                actions.append(Action("graduate", f"canary {canary['release']}: human–RM Spearman {c.spearman:.3f} "
                                                  f"[{c.ci_low:.3f}, {c.ci_high:.3f}] on {c.n} audited pairs, no "
                                                  "drift alarm", evidence, canary["release"]))
            elif c.ci_high is not None and c.ci_high < settings.min_human_rm_correlation:
                actions.append(Action("end_canary", f"canary {canary['release']}: human–RM Spearman "
                                                    f"{c.spearman:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}] under "
                                                    f"{settings.min_human_rm_correlation}", evidence,
                                      canary["release"]))
    return actions
