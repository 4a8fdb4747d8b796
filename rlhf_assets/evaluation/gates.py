"""Deployment decision for a release: gates over the measured quality of its reward model and policy, then one
verdict — ``promote``, ``canary``, ``reject`` or ``escalate`` — with its reasons.

Gates (one row each, in this order; thresholds from :class:`GateThresholds`):

- ``upstream_checks``       no blocking upstream asset check failed
- ``rm_test_accuracy``      reward-model pairwise accuracy on the test split ≥ min_rm_test_accuracy
- ``calibrated_ece``        expected calibration error after calibration ≤ max_calibrated_ece
- ``human_rm_correlation``  Spearman of calibrated RM preference with human agreement ≥ min_human_rm_correlation
- ``kl``                    KL(policy ‖ reference) in nats ≤ max_kl, the PPO KL budget
- ``ope_reliable``          the off-policy estimate is reliable (ESS and Pareto k̂; see :mod:`.ope`)
- ``uplift``                estimated uplift over the behaviour policy > min_uplift_lower_bound
- ``uplift_ci_low``         the lower end of its confidence interval > min_uplift_lower_bound

A measurement that is None (or NaN) fails its gate with the reason "not measured".

Verdict — the first rule that applies:

1. ``reject``    something was not measured: there is no evidence to act on (rerun the missing step).
2. ``reject``    a quality gate failed (upstream checks, RM accuracy, ECE, human correlation): the reward signal
   the policy was optimised against cannot be trusted, so neither can any uplift measured with it.
3. KL over budget: ``escalate`` when the OPE is reliable and the uplift's lower bound ≥ escalate_min_uplift — a
   large, well-measured gain may be worth a person's look at a policy that drifted far from its reference (reward
   hacking is the usual cause); otherwise ``reject``.
4. ``canary``    the OPE is unreliable (and ``require_ope_reliable``): the logged data cannot measure this policy,
   only live traffic can. We canary rather than reject because every other gate passed and the KL budget bounds how
   far the policy moved; ``canary_share`` bounds the exposure.
5. ``reject``    the uplift's point estimate ≤ min_uplift_lower_bound: the best guess is no gain.
6. ``canary``    the uplift's lower bound ≤ min_uplift_lower_bound: probably better, not yet shown; measure it live.
7. ``promote``   every gate passes.

Pure Python; the ``deployment_decision`` asset builds :class:`GateInputs` from its upstream assets and calls
:func:`decide`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from rlhf_assets.registry.decisions import VERDICTS

__all__ = ["VERDICTS", "Decision", "GateInputs", "GateThresholds", "decide"]

NOT_MEASURED = "not measured"
_QUALITY_GATES = ("upstream_checks", "rm_test_accuracy", "calibrated_ece", "human_rm_correlation")
_SYMBOL = {">=": "≥", "<=": "≤", ">": ">", "==": "=", "none": ""}


@dataclass(frozen=True)
class GateThresholds:
    """What a release must show to be promoted. Every threshold is reported next to its measured value."""

    min_uplift_lower_bound: float = 0.0    # the uplift CI's lower bound (and point estimate) must be > this
    require_ope_reliable: bool = True      # an unreliable OPE means canary, not promote (rule 4)
    max_kl: float = 10.0                   # nats: KL(policy ‖ reference), the PPO KL budget
    min_rm_test_accuracy: float = 0.6      # reward-model pairwise accuracy on the held-out test split
    max_calibrated_ece: float = 0.05       # expected calibration error of the calibrated RM probabilities
    min_human_rm_correlation: float = 0.3  # Spearman: calibrated RM preference vs human agreement share
    canary_share: float = 0.1              # share of traffic a canary gets
    escalate_min_uplift: float = 0.1       # uplift lower bound that turns a KL-over-budget reject into escalate

    def __post_init__(self) -> None:
        for name in ("min_uplift_lower_bound", "max_kl", "min_rm_test_accuracy", "max_calibrated_ece",
                     "min_human_rm_correlation", "canary_share", "escalate_min_uplift"):
            if not isinstance(getattr(self, name), (int, float)) or math.isnan(getattr(self, name)):
                raise ValueError(f"{name} must be a number; got {getattr(self, name)!r}")
        if not 0.0 < self.canary_share < 1.0:
            raise ValueError(f"canary_share must be in (0, 1); got {self.canary_share}")
        if self.max_kl <= 0.0:
            raise ValueError(f"max_kl must be > 0 nats; got {self.max_kl}")
        if not 0.0 <= self.min_rm_test_accuracy <= 1.0 or not 0.0 <= self.max_calibrated_ece <= 1.0:
            raise ValueError("min_rm_test_accuracy and max_calibrated_ece must be in [0, 1]")
        if not -1.0 <= self.min_human_rm_correlation <= 1.0:
            raise ValueError(f"min_human_rm_correlation must be in [-1, 1]; got {self.min_human_rm_correlation}")
        if self.escalate_min_uplift < self.min_uplift_lower_bound:
            raise ValueError(f"escalate_min_uplift ({self.escalate_min_uplift}) must be ≥ min_uplift_lower_bound "
                             f"({self.min_uplift_lower_bound}): escalation needs more evidence than promotion")


@dataclass(frozen=True)
class GateInputs:
    """The measured values a decision rests on; None means "not measured" (and fails that gate)."""

    uplift: Optional[float] = None
    uplift_ci_low: Optional[float] = None
    uplift_ci_high: Optional[float] = None
    ope_reliable: Optional[bool] = None
    ope_reason: Optional[str] = None
    kl: Optional[float] = None
    rm_test_accuracy: Optional[float] = None
    calibrated_ece: Optional[float] = None
    human_rm_correlation: Optional[float] = None
    failed_upstream_checks: Optional[list[str]] = None

    def __post_init__(self) -> None:
        checks = self.failed_upstream_checks
        if checks is not None:
            if isinstance(checks, str) or not all(isinstance(c, str) for c in checks):
                raise ValueError(f"failed_upstream_checks must be a list of check names; got {checks!r}")
            object.__setattr__(self, "failed_upstream_checks", list(checks))
        if self.ope_reliable is not None and not isinstance(self.ope_reliable, bool):
            raise ValueError(f"ope_reliable must be True, False or None; got {self.ope_reliable!r}")


def _measured(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _gate(name: str, value: Any, threshold: Any, comparison: str, label: str) -> dict[str, Any]:
    """One gate row. ``label`` names the quantity in the failure reason."""
    if not _measured(value):
        return {"name": name, "value": None, "threshold": threshold, "comparison": comparison, "passed": False,
                "reason": NOT_MEASURED}
    if not isinstance(value, bool):
        value = float(value)
    passed = {">=": value >= threshold, "<=": value <= threshold, ">": value > threshold,
              "==": value == threshold}[comparison]
    negation = {">=": "<", "<=": ">", ">": "≤", "==": "≠"}[comparison]
    reason = None if passed else f"{label} {_fmt(value)} {negation} {_fmt(threshold)}"
    return {"name": name, "value": value, "threshold": threshold, "comparison": comparison, "passed": bool(passed),
            "reason": reason}


def _gates(x: GateInputs, t: GateThresholds) -> list[dict[str, Any]]:
    if x.failed_upstream_checks is None:
        upstream = {"name": "upstream_checks", "value": None, "threshold": None, "comparison": "none",
                    "passed": False, "reason": NOT_MEASURED}
    else:
        failed = x.failed_upstream_checks
        upstream = {"name": "upstream_checks", "value": failed, "threshold": None, "comparison": "none",
                    "passed": not failed,
                    "reason": f"blocking upstream check(s) failed: {', '.join(failed)}" if failed else None}
    if t.require_ope_reliable:
        ope = _gate("ope_reliable", x.ope_reliable, True, "==", "OPE reliable")
        if x.ope_reliable is False:
            ope["reason"] = f"OPE unreliable: {x.ope_reason or 'no reason given'}"
    else:
        ope = {"name": "ope_reliable", "value": x.ope_reliable, "threshold": None, "comparison": "none",
               "passed": True, "reason": None}
    lb = t.min_uplift_lower_bound
    return [
        upstream,
        _gate("rm_test_accuracy", x.rm_test_accuracy, t.min_rm_test_accuracy, ">=", "RM test accuracy"),
        _gate("calibrated_ece", x.calibrated_ece, t.max_calibrated_ece, "<=", "calibrated ECE"),
        _gate("human_rm_correlation", x.human_rm_correlation, t.min_human_rm_correlation, ">=",
              "human–RM Spearman correlation"),
        _gate("kl", x.kl, t.max_kl, "<=", "KL (nats)"),
        ope,
        _gate("uplift", x.uplift, lb, ">", "estimated uplift"),
        _gate("uplift_ci_low", x.uplift_ci_low, lb, ">", "uplift CI lower bound"),
    ]


def _fmt(v: Any) -> str:
    if v is None:
        return NOT_MEASURED
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


@dataclass
class Decision:
    """The verdict, the gate rows behind it, and the reasons (failed gates first, then the rule that decided)."""

    verdict: str
    canary_share: Optional[float]
    gates: list[dict[str, Any]]
    reasons: list[str]
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    inputs: GateInputs = field(default_factory=GateInputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (non-finite floats → None)."""
        return _json_safe({"verdict": self.verdict, "canary_share": self.canary_share, "gates": self.gates,
                           "reasons": self.reasons, "thresholds": asdict(self.thresholds),
                           "inputs": asdict(self.inputs)})

    def markdown_table(self) -> str:
        """The gates as a markdown table: gate | value | threshold | passed."""
        lines = ["| gate | value | threshold | passed |", "|---|---|---|---|"]
        for g in self.gates:
            if g["comparison"] == "none":
                threshold = "none failed" if g["name"] == "upstream_checks" else "not required"
            else:
                threshold = f"{_SYMBOL[g['comparison']]} {_fmt(g['threshold'])}"
            cells = [g["name"], _fmt(g["value"]), threshold, "yes" if g["passed"] else "**no**"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def _verdict(x: GateInputs, t: GateThresholds, by_name: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(verdict, the sentence that explains it), by the rules in the module docstring."""
    missing = [name for name, g in by_name.items() if g["reason"] == NOT_MEASURED]
    if missing:
        return "reject", f"reject: not measured: {', '.join(missing)} — no evidence to act on"
    failed_quality = [name for name in _QUALITY_GATES if not by_name[name]["passed"]]
    if failed_quality:
        return "reject", f"reject: quality gate(s) failed: {', '.join(failed_quality)}"
    ope_ok = by_name["ope_reliable"]["passed"]
    if not by_name["kl"]["passed"]:
        over = f"KL {_fmt(x.kl)} nats is over the budget of {_fmt(t.max_kl)}"
        if ope_ok and x.uplift_ci_low >= t.escalate_min_uplift:
            return "escalate", (f"escalate: {over}, but the uplift lower bound {_fmt(x.uplift_ci_low)} ≥ "
                                f"{_fmt(t.escalate_min_uplift)}; a person should check for reward hacking")
        why = ("the OPE is unreliable" if not ope_ok else
               f"the uplift lower bound {_fmt(x.uplift_ci_low)} < {_fmt(t.escalate_min_uplift)}")
        return "reject", f"reject: {over} and {why}, which does not justify an escalation"
    if not ope_ok:
        return "canary", (f"canary at {t.canary_share:.0%}: every quality gate passes and KL is within budget, "
                          f"but the logged data cannot measure this policy — live traffic will")
    if not by_name["uplift"]["passed"]:
        return "reject", f"reject: estimated uplift {_fmt(x.uplift)} ≤ {_fmt(t.min_uplift_lower_bound)}"
    if not by_name["uplift_ci_low"]["passed"]:
        return "canary", (f"canary at {t.canary_share:.0%}: estimated uplift {_fmt(x.uplift)} > "
                          f"{_fmt(t.min_uplift_lower_bound)} but its lower bound {_fmt(x.uplift_ci_low)} is not")
    return "promote", "promote: every gate passes"


def decide(inputs: GateInputs, thresholds: Optional[GateThresholds] = None) -> Decision:
    """Run every gate and pick the verdict (see the module docstring for the rules)."""
    t = thresholds if thresholds is not None else GateThresholds()
    gates = _gates(inputs, t)
    verdict, why = _verdict(inputs, t, {g["name"]: g for g in gates})
    reasons = [f"{g['name']}: {g['reason']}" for g in gates if not g["passed"]] + [why]
    return Decision(verdict=verdict, canary_share=t.canary_share if verdict == "canary" else None, gates=gates,
                    reasons=reasons, thresholds=t, inputs=inputs)
