"""Deployment decision for a release: gates over the measured quality of its reward model and policy, each with an
interval and one of three outcomes, then one verdict — ``promote``, ``canary``, ``reject`` or ``escalate`` — with
its reasons.

Gates (one row each, in this order; limits from :class:`~rlhf_assets.evaluation.thresholds.ReleaseThresholds`):

===================== ====================================================================== =========================
gate                  measured                                                               pass when
===================== ====================================================================== =========================
upstream_checks       latest evaluation of every blocking check on this release's partition  all passed
rm_test_accuracy      reward-model pairwise accuracy on the test split, bootstrap interval   interval ≥ min
calibrated_ece        ECE of the calibrated RM on the test split, bias-corrected bootstrap    interval ≤ max
human_rm_correlation  Spearman of the calibrated preference with human agreement, interval    interval ≥ min
kl                    KL(policy ‖ reference), measured afresh by the kl_within_budget check   interval ≤ limit
ope_reliable          the off-policy weights can support an estimate (ESS, PSIS k̂)           reliable
uplift                the independent JUDGE's off-policy uplift over the behaviour policy     interval > min
===================== ====================================================================== =========================

Outcomes: ``pass`` (the whole interval is on the right side of the limit), ``fail`` (the whole interval is on the
wrong side), ``inconclusive`` (it straddles), ``not measured`` (no value or no interval: fails closed). The upstream
checks fail when one failed and are not measured when one has no passing evaluation of the release's latest
materialization. KL is a hard budget: the point estimate over the limit is ``fail``; an interval reaching over it is
``inconclusive``. An unreliable OPE is ``inconclusive`` (the logs cannot measure the policy) and so is the uplift
measured with it, whatever its interval says. The proxy uplift (measured with the reward model PPO optimised) is
reported beside the judge's and never gates: PPO is trained to raise it.

Verdict — the first rule that applies:

1. ``reject``    some gate is not measured: there is no evidence to act on (rerun the missing step).
2. ``reject``    a quality gate failed (upstream checks, RM accuracy, ECE, human correlation, uplift): there is
   evidence the release is bad.
3. KL over the limit: ``escalate`` when everything else passes and the judge's uplift lower bound ≥
   ``escalate_min_uplift`` — a large, well-measured gain may be worth a person's look at a policy that drifted far
   from its reference (reward hacking is the usual cause); otherwise ``reject``.
4. ``canary``    some gate is inconclusive: nothing shows the release is bad, not everything shows it is good; it
   needs live evidence, so it serves ``canary_share`` of the traffic.
5. ``promote``   every gate passes.

Pure Python; the ``deployment_decision`` asset builds :class:`GateInputs` with :meth:`GateInputs.from_release` from
its upstream references and calls :func:`decide`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import Field

from rlhf_assets.config_schema import settings
from rlhf_assets.evaluation.evidence import FAIL, INCONCLUSIVE, NOT_MEASURED, PASS, outcome
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.jsonsafe import finite_or_none, json_safe
from rlhf_assets.references import CalibrationRef, OPERef, PolicyRef
from rlhf_assets.registry.decisions import VERDICTS

__all__ = ["VERDICTS", "Decision", "DecisionSettings", "GateInputs", "Measured", "decide"]

GATE_NAMES = ("upstream_checks", "rm_test_accuracy", "calibrated_ece", "human_rm_correlation", "kl", "ope_reliable",
              "uplift")
_QUALITY_GATES = ("upstream_checks", "rm_test_accuracy", "calibrated_ece", "human_rm_correlation", "uplift")
_SYMBOL = {">=": "≥", "<=": "≤", ">": ">"}
_NEGATION = {">=": "<", "<=": ">", ">": "≤"}


@settings
class DecisionSettings:
    """How verdicts act on the gates' outcomes (not thresholds on a measurement: those are ReleaseThresholds)."""

    canary_share: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Share of traffic a canary gets."""
    escalate_min_uplift: float = 0.1
    """The judge's uplift lower bound that turns a KL-over-limit reject into an escalation to a person."""
    require_ope_reliable: bool = True
    """False: an unreliable OPE is reported but its interval is taken at face value (not recommended)."""


@dataclass(frozen=True)
class Measured:
    """A measured value with its interval; any of them None means "not measured"."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def of(cls, value: Any, ci_low: Any = None, ci_high: Any = None) -> Measured:
        return cls(finite_or_none(value), finite_or_none(ci_low), finite_or_none(ci_high))

    @property
    def complete(self) -> bool:
        return None not in (self.value, self.ci_low, self.ci_high)


@dataclass(frozen=True)
class GateInputs:
    """The measurements a decision rests on. None (or an incomplete :class:`Measured`) fails closed."""

    upstream_checks: list[dict[str, Any]] | None = None  # [{"check", "status", "detail"}, ...]
    rm_test_accuracy: Measured = Measured()
    calibrated_ece: Measured = Measured()
    human_rm_correlation: Measured = Measured()
    kl: Measured = Measured()
    kl_budget: float | None = None                       # the release's PPO budget (nats)
    ope_reliable: bool | None = None
    ope_reason: str | None = None
    uplift: Measured = Measured()                           # the independent judge's uplift: gates
    proxy_uplift: Measured = Measured()                     # the optimised reward model's uplift: reported only

    def __post_init__(self) -> None:
        checks = self.upstream_checks
        if checks is not None and (isinstance(checks, (str, dict)) or not all(
                isinstance(c, dict) and {"check", "status"} <= set(c) for c in checks)):
            raise ValueError(f"upstream_checks must be a list of {{'check', 'status'}} dicts; got {checks!r}")
        if self.ope_reliable is not None and not isinstance(self.ope_reliable, bool):
            raise ValueError(f"ope_reliable must be True, False or None; got {self.ope_reliable!r}")
        for name in ("rm_test_accuracy", "calibrated_ece", "human_rm_correlation", "kl", "uplift", "proxy_uplift"):
            if not isinstance(getattr(self, name), Measured):
                raise ValueError(f"{name} must be a Measured(value, ci_low, ci_high); got {getattr(self, name)!r}")

    @classmethod
    def from_release(cls, ope: OPERef, ppo: PolicyRef, calibration: CalibrationRef,
                     upstream_checks: list[dict] | None) -> GateInputs:
        """The gates' inputs from a release's references (ope_report, ppo_policy, rm_calibration) and its upstream
        blocking checks. A missing key is "not measured", so a record from an older code version fails closed
        instead of passing."""
        report, human, ope_report = calibration.report or {}, calibration.human_correlation or {}, ope.report or {}
        reliable = ope_report.get("reliable")
        return cls(
            upstream_checks=upstream_checks,
            rm_test_accuracy=_pair(report.get("accuracy"), report.get("accuracy_ci")),
            calibrated_ece=_pair(report.get("ece_after_debiased"), report.get("ece_after_ci")),
            human_rm_correlation=_ci(human, "spearman", "spearman_ci_low", "spearman_ci_high"),
            kl=_ci(ppo.measured_kl), kl_budget=ppo.kl_budget,
            ope_reliable=reliable if isinstance(reliable, bool) else None,
            ope_reason=ope_report.get("reason"),
            uplift=_ci((ope_report.get("judge") or {}).get("uplift")),
            proxy_uplift=_ci((ope_report.get("proxy") or {}).get("uplift")),
        )


def _ci(d: dict | None, value: str = "value", low: str = "ci_low", high: str = "ci_high") -> Measured:
    d = d or {}
    return Measured.of(d.get(value), d.get(low), d.get(high))


def _pair(value: Any, ci: Any) -> Measured:
    lo, hi = (ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None))
    return Measured.of(value, lo, hi)


def _fmt(v: Any) -> str:
    if v is None:
        return NOT_MEASURED
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _interval(m: Measured) -> str:
    return f"[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]" if m.ci_low is not None and m.ci_high is not None else "—"


def _row(name: str, m: Measured | None, threshold: Any, comparison: str | None, result: str,
         reason: str | None) -> dict[str, Any]:
    m = m or Measured()
    return {"name": name, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high, "threshold": threshold,
            "comparison": comparison, "outcome": result, "passed": result == PASS, "reason": reason}


def _interval_gate(name: str, label: str, m: Measured, threshold: float, comparison: str) -> dict[str, Any]:
    result = outcome(m.ci_low, m.ci_high, threshold, comparison) if m.value is not None else NOT_MEASURED
    sym, neg = _SYMBOL[comparison], _NEGATION[comparison]
    reason = {PASS: None, NOT_MEASURED: NOT_MEASURED,
              FAIL: f"{label} {_fmt(m.value)}, interval {_interval(m)} entirely {neg} {_fmt(threshold)}",
              INCONCLUSIVE: f"{label} {_fmt(m.value)}, interval {_interval(m)} straddles {sym} {_fmt(threshold)}: "
                            f"needs more evidence"}[result]
    return _row(name, m, threshold, comparison, result, reason)


def _upstream_gate(checks: list[dict[str, Any]] | None) -> dict[str, Any]:
    if checks is None:
        return _row("upstream_checks", None, None, None, NOT_MEASURED, NOT_MEASURED)
    failed = [c["check"] for c in checks if c["status"] == "failed"]
    missing = [c["check"] for c in checks if c["status"] not in ("passed", "failed")]
    m = Measured()
    row = _row("upstream_checks", m, None, None, PASS, None)
    row["value"] = [f"{c['check']}: {c['status']}" for c in checks]
    if failed:
        row.update(outcome=FAIL, passed=False, reason=f"blocking upstream check(s) failed: {', '.join(failed)}")
    elif missing or not checks:
        details = "; ".join(f"{c['check']} ({c.get('detail', c['status'])})" for c in checks
                            if c["check"] in missing) or "no blocking checks were looked up"
        row.update(outcome=NOT_MEASURED, passed=False, reason=f"{NOT_MEASURED}: {details}")
    return row


def _kl_gate(m: Measured, limit: float | None) -> dict[str, Any]:
    if limit is None or not m.complete:
        return _row("kl", m, limit, "<=", NOT_MEASURED, NOT_MEASURED)
    if m.value > limit:
        result, reason = FAIL, f"KL {_fmt(m.value)} nats is over the limit of {_fmt(limit)}"
    elif m.ci_high > limit:
        result, reason = INCONCLUSIVE, (f"KL {_fmt(m.value)} nats, interval {_interval(m)} reaches over the limit "
                                        f"of {_fmt(limit)}: needs more evidence")
    else:
        result, reason = PASS, None
    return _row("kl", m, limit, "<=", result, reason)


def _ope_gate(x: GateInputs, s: DecisionSettings) -> dict[str, Any]:
    if x.ope_reliable is None:
        return _row("ope_reliable", None, True, None, NOT_MEASURED, NOT_MEASURED)
    row = _row("ope_reliable", None, True, None, PASS, None)
    row["value"] = x.ope_reliable
    if not x.ope_reliable:
        why = f"OPE unreliable: {x.ope_reason or 'no reason given'}"
        row.update(outcome=INCONCLUSIVE if s.require_ope_reliable else PASS,
                   passed=not s.require_ope_reliable, reason=why if s.require_ope_reliable else None)
    return row


def _gates(x: GateInputs, t: ReleaseThresholds, s: DecisionSettings) -> list[dict[str, Any]]:
    uplift = _interval_gate("uplift", "judge uplift", x.uplift, t.min_uplift, ">")
    if x.ope_reliable is False and s.require_ope_reliable and uplift["outcome"] != NOT_MEASURED:
        uplift.update(outcome=INCONCLUSIVE, passed=False,
                      reason=f"judge uplift {_fmt(x.uplift.value)} is not supported by the importance weights "
                             f"(OPE unreliable): needs live evidence")
    return [
        _upstream_gate(x.upstream_checks),
        _interval_gate("rm_test_accuracy", "RM test accuracy", x.rm_test_accuracy, t.min_rm_test_accuracy, ">="),
        _interval_gate("calibrated_ece", "calibrated ECE", x.calibrated_ece, t.max_calibrated_ece, "<="),
        _interval_gate("human_rm_correlation", "human–RM Spearman", x.human_rm_correlation,
                       t.min_human_rm_correlation, ">="),
        _kl_gate(x.kl, t.kl_limit(x.kl_budget)),
        _ope_gate(x, s),
        uplift,
    ]


@dataclass
class Decision:
    """The verdict, the gate rows behind it, and the reasons (gates that did not pass first, then the rule)."""

    verdict: str
    canary_share: float | None
    gates: list[dict[str, Any]]
    reasons: list[str]
    thresholds: ReleaseThresholds = field(default_factory=ReleaseThresholds)
    settings: DecisionSettings = field(default_factory=DecisionSettings)
    inputs: GateInputs = field(default_factory=GateInputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (non-finite floats → None)."""
        return json_safe({"verdict": self.verdict, "canary_share": self.canary_share, "gates": self.gates,
                          "reasons": self.reasons, "thresholds": asdict(self.thresholds),
                          "settings": asdict(self.settings), "inputs": asdict(self.inputs)})

    def display_rows(self) -> list[dict[str, str]]:
        """The gates for people: gate, value, interval, threshold, outcome, reason — each as text, numbers to 4
        significant digits; the upstream checks as "4/4 passed" (and which did not)."""
        rows = []
        for g in self.gates:
            value = g["value"]
            if isinstance(value, list):  # ["asset:check: status", …] → "3/4 passed; failed: asset:check"
                by_status: dict[str, list[str]] = {}
                for v in value:
                    name, _, status = v.rpartition(": ")
                    by_status.setdefault(status, []).append(name)
                value = "; ".join([f"{len(by_status.get('passed', []))}/{len(value)} passed"] + [
                    f"{status}: {', '.join(names)}" for status, names in by_status.items() if status != "passed"]
                ) if value else "none"
            else:
                value = _fmt(value)
            interval = _interval(Measured(g["value"] if isinstance(g["value"], float) else None, g["ci_low"],
                                          g["ci_high"]))
            if g["name"] == "upstream_checks":
                threshold = "all passed"
            elif g["name"] == "ope_reliable":
                threshold = "reliable" if self.settings.require_ope_reliable else "not required"
            elif g["threshold"] is None:
                threshold = "—"
            else:
                threshold = f"{_SYMBOL[g['comparison']]} {_fmt(g['threshold'])}"
            rows.append({"gate": g["name"], "value": value, "interval": interval, "threshold": threshold,
                         "outcome": g["outcome"], "reason": g["reason"] or ""})
        return rows

    def proxy_uplift_line(self) -> str | None:
        """The proxy's uplift, shown beside the gates (it never gates)."""
        if self.inputs.proxy_uplift.value is None:
            return None
        return (f"Proxy uplift (the reward model PPO optimised; reported, never gates): "
                f"{_fmt(self.inputs.proxy_uplift.value)} {_interval(self.inputs.proxy_uplift)}")

    def markdown_table(self) -> str:
        """The gates as a markdown table: gate | value | interval | threshold | outcome."""
        lines = ["| gate | value | interval | threshold | outcome |", "|---|---|---|---|---|"]
        for row in self.display_rows():
            shown = row["outcome"] if row["outcome"] == PASS else f"**{row['outcome']}**"
            cells = [row["gate"], row["value"], row["interval"], row["threshold"], shown]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if self.proxy_uplift_line():
            lines.append(f"\n{self.proxy_uplift_line()}")
        return "\n".join(lines)


def _verdict(x: GateInputs, s: DecisionSettings, by_name: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(verdict, the sentence that explains it), by the rules in the module docstring."""
    missing = [n for n, g in by_name.items() if g["outcome"] == NOT_MEASURED]
    if missing:
        return "reject", f"reject: not measured: {', '.join(missing)} — no evidence to act on (fails closed)"
    failed = [n for n in _QUALITY_GATES if by_name[n]["outcome"] == FAIL]
    if failed:
        return "reject", f"reject: evidence that the release is bad: {', '.join(failed)}"
    inconclusive = [n for n, g in by_name.items() if g["outcome"] == INCONCLUSIVE]
    if by_name["kl"]["outcome"] == FAIL:
        over = by_name["kl"]["reason"]
        if not inconclusive and x.uplift.ci_low >= s.escalate_min_uplift:
            return "escalate", (f"escalate: {over}, but the judge's uplift lower bound {_fmt(x.uplift.ci_low)} ≥ "
                                f"{_fmt(s.escalate_min_uplift)}; a person should check for reward hacking")
        why = (f"inconclusive: {', '.join(inconclusive)}" if inconclusive else
               f"the judge's uplift lower bound {_fmt(x.uplift.ci_low)} < {_fmt(s.escalate_min_uplift)}")
        return "reject", f"reject: {over} and {why}, which does not justify an escalation"
    if inconclusive:
        return "canary", (f"canary at {s.canary_share:.0%}: needs live evidence — inconclusive: "
                          f"{', '.join(inconclusive)}; nothing shows the release is bad")
    return "promote", "promote: every gate passes"


def decide(inputs: GateInputs, thresholds: ReleaseThresholds | None = None,
           settings: DecisionSettings | None = None) -> Decision:
    """Run every gate and pick the verdict (see the module docstring for the rules)."""
    t = thresholds if thresholds is not None else ReleaseThresholds()
    s = settings if settings is not None else DecisionSettings()
    if s.escalate_min_uplift < t.min_uplift:
        raise ValueError(f"escalate_min_uplift ({s.escalate_min_uplift}) must be ≥ min_uplift ({t.min_uplift}): "
                         f"escalation needs more evidence than promotion")
    gates = _gates(inputs, t, s)
    verdict, why = _verdict(inputs, s, {g["name"]: g for g in gates})
    reasons = [f"{g['name']}: {g['reason']}" for g in gates if g["outcome"] != PASS and g["reason"]] + [why]
    return Decision(verdict=verdict, canary_share=s.canary_share if verdict == "canary" else None, gates=gates,
                    reasons=reasons, thresholds=t, settings=s, inputs=inputs)
