"""Deployment gates: one test per verdict rule, missing measurements, thresholds, and the report forms."""

import dataclasses
import json

import pytest

from rlhf_assets.evaluation.gates import VERDICTS, GateInputs, GateThresholds, decide

GOOD = GateInputs(uplift=0.05, uplift_ci_low=0.02, uplift_ci_high=0.08, ope_reliable=True, ope_reason=None, kl=4.0,
                  rm_test_accuracy=0.72, calibrated_ece=0.03, human_rm_correlation=0.45, failed_upstream_checks=[])


def _with(**changes):
    return dataclasses.replace(GOOD, **changes)


def _gate(decision, name):
    return next(g for g in decision.gates if g["name"] == name)


def test_everything_passing_is_promoted():
    d = decide(GOOD)
    assert d.verdict == "promote" and d.canary_share is None
    assert all(g["passed"] and g["reason"] is None for g in d.gates)
    assert d.reasons == ["promote: every gate passes"]
    assert [g["name"] for g in d.gates] == ["upstream_checks", "rm_test_accuracy", "calibrated_ece",
                                            "human_rm_correlation", "kl", "ope_reliable", "uplift", "uplift_ci_low"]


@pytest.mark.parametrize("changes, gate, reason", [
    ({"failed_upstream_checks": ["quarantine_rate"]}, "upstream_checks",
     "blocking upstream check(s) failed: quarantine_rate"),
    ({"rm_test_accuracy": 0.55}, "rm_test_accuracy", "RM test accuracy 0.55 < 0.6"),
    ({"calibrated_ece": 0.08}, "calibrated_ece", "calibrated ECE 0.08 > 0.05"),
    ({"human_rm_correlation": 0.1}, "human_rm_correlation", "human–RM Spearman correlation 0.1 < 0.3"),
])
def test_a_failed_quality_gate_rejects(changes, gate, reason):
    # even with a huge, reliable uplift: the reward signal behind it is not trusted
    d = decide(_with(uplift=0.5, uplift_ci_low=0.4, **changes))
    assert d.verdict == "reject" and d.canary_share is None
    assert not _gate(d, gate)["passed"] and _gate(d, gate)["reason"] == reason
    assert d.reasons == [f"{gate}: {reason}", f"reject: quality gate(s) failed: {gate}"]


def test_unreliable_ope_gives_a_canary():
    d = decide(_with(ope_reliable=False, ope_reason="pareto k̂ = 0.93 > 0.7: importance weights have a heavy tail",
                     uplift=-0.01, uplift_ci_low=-0.2))  # the unreliable numbers do not matter
    assert d.verdict == "canary" and d.canary_share == 0.1
    assert _gate(d, "ope_reliable")["reason"] == ("OPE unreliable: pareto k̂ = 0.93 > 0.7: importance weights have "
                                                  "a heavy tail")
    assert d.reasons[-1].startswith("canary at 10%: every quality gate passes")
    # with require_ope_reliable=False the numbers are taken at face value: uplift ≤ 0 rejects
    lax = decide(d.inputs, GateThresholds(require_ope_reliable=False))
    assert lax.verdict == "reject" and _gate(lax, "ope_reliable")["passed"]


def test_uplift_rules():
    d = decide(_with(uplift=0.03, uplift_ci_low=-0.01))
    assert d.verdict == "canary" and d.canary_share == 0.1
    assert d.reasons[-1] == "canary at 10%: estimated uplift 0.03 > 0 but its lower bound -0.01 is not"
    d = decide(_with(uplift=0.0, uplift_ci_low=-0.04))
    assert d.verdict == "reject" and d.reasons[-1] == "reject: estimated uplift 0 ≤ 0"
    assert decide(_with(uplift=0.03, uplift_ci_low=-0.01),
                  GateThresholds(canary_share=0.25)).canary_share == 0.25


def test_kl_over_budget_escalates_only_a_large_reliable_uplift():
    big = decide(_with(kl=14.0, uplift=0.2, uplift_ci_low=0.15))
    assert big.verdict == "escalate" and big.canary_share is None
    assert big.reasons[0] == "kl: KL (nats) 14 > 10"
    assert big.reasons[-1].startswith("escalate: KL 14 nats is over the budget of 10, but the uplift lower bound")
    small = decide(_with(kl=14.0))
    assert small.verdict == "reject" and "uplift lower bound 0.02 < 0.1" in small.reasons[-1]
    unreliable = decide(_with(kl=14.0, uplift=0.2, uplift_ci_low=0.15, ope_reliable=False, ope_reason="ESS low"))
    assert unreliable.verdict == "reject" and "the OPE is unreliable" in unreliable.reasons[-1]
    assert decide(_with(kl=10.0)).verdict == "promote"  # the budget itself is allowed


@pytest.mark.parametrize("field", ["uplift", "uplift_ci_low", "ope_reliable", "kl", "rm_test_accuracy",
                                   "calibrated_ece", "human_rm_correlation", "failed_upstream_checks"])
def test_a_missing_measurement_fails_its_gate_and_rejects(field):
    gate = {"ope_reliable": "ope_reliable", "failed_upstream_checks": "upstream_checks"}.get(field, field)
    d = decide(_with(**{field: None}))
    assert d.verdict == "reject"
    assert _gate(d, gate) == {**_gate(d, gate), "value": None, "passed": False, "reason": "not measured"}
    assert d.reasons == [f"{gate}: not measured", f"reject: not measured: {gate} — no evidence to act on"]


def test_nan_counts_as_not_measured_and_nothing_measured_rejects():
    assert _gate(decide(_with(calibrated_ece=float("nan"))), "calibrated_ece")["reason"] == "not measured"
    d = decide(GateInputs())
    assert d.verdict == "reject" and not any(g["passed"] for g in d.gates)


def test_to_dict_is_json_and_keeps_thresholds_and_inputs():
    d = decide(_with(kl=float("inf")))
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["verdict"] == "reject" and out["verdict"] in VERDICTS
    assert out["thresholds"]["max_kl"] == 10.0 and out["inputs"]["kl"] is None  # inf → None in JSON
    assert _gate(d, "kl")["value"] == float("inf")  # but the decision itself saw it
    assert out["gates"][0] == {"name": "upstream_checks", "value": [], "threshold": None, "comparison": "none",
                               "passed": True, "reason": None}


def test_markdown_table():
    d = decide(_with(rm_test_accuracy=0.55, failed_upstream_checks=["a|b"], ope_reliable=None))
    lines = d.markdown_table().splitlines()
    assert lines[:2] == ["| gate | value | threshold | passed |", "|---|---|---|---|"]
    assert len(lines) == 2 + len(d.gates)
    assert "| upstream_checks | a\\|b | none failed | **no** |" in lines
    assert "| rm_test_accuracy | 0.55 | ≥ 0.6 | **no** |" in lines
    assert "| calibrated_ece | 0.03 | ≤ 0.05 | yes |" in lines
    assert "| ope_reliable | not measured | = yes | **no** |" in lines
    assert "| uplift_ci_low | 0.02 | > 0 | yes |" in lines


@pytest.mark.parametrize("kwargs, match", [
    ({"canary_share": 0.0}, "canary_share must be in"),
    ({"max_kl": -1.0}, "max_kl must be > 0"),
    ({"max_calibrated_ece": 2.0}, "must be in"),
    ({"min_human_rm_correlation": 1.5}, "min_human_rm_correlation must be in"),
    ({"escalate_min_uplift": -0.5}, "escalation needs more evidence"),
    ({"max_kl": float("nan")}, "max_kl must be a number"),
])
def test_invalid_thresholds_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateThresholds(**kwargs)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="list of check names"):
        GateInputs(failed_upstream_checks="quarantine_rate")
    with pytest.raises(ValueError, match="ope_reliable must be True, False or None"):
        GateInputs(ope_reliable="yes")
