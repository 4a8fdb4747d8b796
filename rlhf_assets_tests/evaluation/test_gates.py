"""Deployment gates: three outcomes on intervals, one test per verdict rule, missing evidence, settings, reports."""

import dataclasses
import json

import pytest

from rlhf_assets.evaluation.evidence import bootstrap_ci, outcome
from rlhf_assets.evaluation.gates import (
    GATE_NAMES,
    VERDICTS,
    DecisionSettings,
    GateInputs,
    Measured,
    decide,
)
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.references import CalibrationRef, OPERef, PolicyRef
from rlhf_assets_tests.support import CHECKS_OK, GOOD


def _with(**changes):
    return dataclasses.replace(GOOD, **changes)


def _gate(decision, name):
    return next(g for g in decision.gates if g["name"] == name)


def test_outcome_is_decided_by_the_whole_interval():
    assert outcome(0.61, 0.70, 0.6, ">=") == "pass"
    assert outcome(0.50, 0.59, 0.6, ">=") == "fail"
    assert outcome(0.55, 0.65, 0.6, ">=") == "inconclusive"
    assert outcome(0.01, 0.04, 0.05, "<=") == "pass"
    assert outcome(0.06, 0.09, 0.05, "<=") == "fail"
    assert outcome(0.03, 0.07, 0.05, "<=") == "inconclusive"
    assert outcome(0.0, 0.1, 0.0, ">") == "inconclusive" and outcome(-0.1, 0.0, 0.0, ">") == "fail"
    assert outcome(None, 0.1, 0.0, ">") == "not measured" and outcome(float("nan"), 0.1, 0.0, ">") == "not measured"


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    import numpy as np

    x = np.random.default_rng(3).normal(1.0, 1.0, 400)
    a = bootstrap_ci(np.mean, [x], n_boot=500, seed=7)
    assert a == bootstrap_ci(np.mean, [x], n_boot=500, seed=7)
    assert a[0] < x.mean() < a[1] and 0.1 < a[1] - a[0] < 0.3  # ≈ 2 · 1.96 / √400
    assert bootstrap_ci(np.mean, [x[:1]]) == (pytest.approx(float("nan"), nan_ok=True),) * 2


def test_everything_passing_is_promoted():
    d = decide(GOOD)
    assert d.verdict == "promote" and d.canary_share is None
    assert [g["name"] for g in d.gates] == list(GATE_NAMES)
    assert all(g["outcome"] == "pass" and g["reason"] is None for g in d.gates)
    assert d.reasons == ["promote: every gate passes"]


@pytest.mark.parametrize("changes, gate, reason", [
    ({"rm_test_accuracy": Measured(0.52, 0.47, 0.57)}, "rm_test_accuracy",
     "RM test accuracy 0.52, interval [0.47, 0.57] entirely < 0.6"),
    ({"calibrated_ece": Measured(0.09, 0.07, 0.12)}, "calibrated_ece",
     "calibrated ECE 0.09, interval [0.07, 0.12] entirely > 0.05"),
    ({"human_rm_correlation": Measured(0.1, 0.0, 0.2)}, "human_rm_correlation",
     "human–RM Spearman 0.1, interval [0, 0.2] entirely < 0.3"),
    ({"uplift": Measured(-0.05, -0.08, -0.01)}, "uplift", "judge uplift -0.05, interval [-0.08, -0.01] entirely ≤ 0"),
    ({"upstream_checks": [{**CHECKS_OK[0], "status": "failed"}, CHECKS_OK[1]]}, "upstream_checks",
     "blocking upstream check(s) failed: rm_calibration:test_accuracy"),
])
def test_a_failed_quality_gate_rejects(changes, gate, reason):
    d = decide(_with(**changes))
    assert d.verdict == "reject" and d.canary_share is None
    assert _gate(d, gate)["outcome"] == "fail" and _gate(d, gate)["reason"] == reason
    assert d.reasons == [f"{gate}: {reason}", f"reject: evidence that the release is bad: {gate}"]


@pytest.mark.parametrize("changes, gate", [
    ({"rm_test_accuracy": Measured(0.62, 0.56, 0.68)}, "rm_test_accuracy"),
    ({"calibrated_ece": Measured(0.074, 0.045, 0.11)}, "calibrated_ece"),
    ({"human_rm_correlation": Measured(0.32, 0.2, 0.44)}, "human_rm_correlation"),
    ({"uplift": Measured(0.05, -0.01, 0.1)}, "uplift"),
    ({"kl": Measured(11.0, 10.0, 12.5)}, "kl"),
    ({"ope_reliable": False, "ope_reason": "pareto k̂ 1.6 > 0.7"}, "ope_reliable"),
])
def test_an_inconclusive_gate_gives_a_canary_that_needs_live_evidence(changes, gate):
    d = decide(_with(**changes))
    assert d.verdict == "canary" and d.canary_share == 0.1
    assert _gate(d, gate)["outcome"] == "inconclusive"
    assert d.reasons[-1].startswith("canary at 10%: needs live evidence — inconclusive: ") and gate in d.reasons[-1]
    assert decide(_with(**changes), settings=DecisionSettings(canary_share=0.25)).canary_share == 0.25


def test_an_unreliable_ope_makes_its_uplift_inconclusive_whatever_the_interval():
    # a refused estimate can print a confident-looking interval: it must not promote, nor reject on its own
    d = decide(_with(ope_reliable=False, ope_reason="ESS 3% < 10%", uplift=Measured(0.5, 0.4, 0.6)))
    assert d.verdict == "canary" and _gate(d, "uplift")["outcome"] == "inconclusive"
    d = decide(_with(ope_reliable=False, ope_reason="ESS 3% < 10%", uplift=Measured(-0.5, -0.6, -0.4)))
    assert d.verdict == "canary"
    lax = decide(d.inputs, settings=DecisionSettings(require_ope_reliable=False))
    assert lax.verdict == "reject" and _gate(lax, "ope_reliable")["outcome"] == "pass"


def test_the_proxy_uplift_never_gates():
    d = decide(_with(proxy_uplift=Measured(-1.0, -1.2, -0.8)))
    assert d.verdict == "promote"
    d = decide(_with(proxy_uplift=Measured(2.0, 1.5, 2.5), uplift=Measured(-0.05, -0.08, -0.01)))
    assert d.verdict == "reject"  # over-optimisation: the proxy rises, the judge falls


def test_kl_over_the_limit_escalates_only_a_large_well_measured_uplift():
    big = decide(_with(kl=Measured(14.0, 13.0, 15.0), uplift=Measured(0.2, 0.15, 0.25)))
    assert big.verdict == "escalate" and big.canary_share is None
    assert big.reasons[0] == "kl: KL 14 nats is over the limit of 12"
    assert big.reasons[-1].startswith("escalate: KL 14 nats is over the limit of 12, but the judge's uplift lower")
    small = decide(_with(kl=Measured(14.0, 13.0, 15.0)))
    assert small.verdict == "reject" and "uplift lower bound 0.02 < 0.1" in small.reasons[-1]
    unsure = decide(_with(kl=Measured(14.0, 13.0, 15.0), uplift=Measured(0.2, 0.15, 0.25), ope_reliable=False))
    assert unsure.verdict == "reject" and "inconclusive: ope_reliable, uplift" in unsure.reasons[-1]
    assert decide(_with(kl=Measured(12.0, 11.0, 12.0))).verdict == "promote"  # the limit itself is allowed


def test_the_kl_limit_is_the_release_budget_unless_configured_tighter():
    d = decide(_with(kl=Measured(11.0, 10.5, 11.5), kl_budget=12.0))
    assert d.verdict == "promote" and _gate(d, "kl")["threshold"] == 12.0
    tight = decide(d.inputs, ReleaseThresholds(max_kl=10.0))
    assert tight.verdict == "reject" and _gate(tight, "kl")["threshold"] == 10.0
    loose = decide(d.inputs, ReleaseThresholds(max_kl=50.0))  # a looser max_kl cannot relax the budget
    assert _gate(loose, "kl")["threshold"] == 12.0


@pytest.mark.parametrize("field", ["upstream_checks", "rm_test_accuracy", "calibrated_ece", "human_rm_correlation",
                                   "kl", "kl_budget", "ope_reliable", "uplift"])
def test_missing_evidence_fails_closed(field):
    gate = {"kl_budget": "kl"}.get(field, field)
    empty = None if field in ("upstream_checks", "kl_budget", "ope_reliable") else Measured()
    d = decide(_with(**{field: empty}))
    assert d.verdict == "reject" and _gate(d, gate)["outcome"] == "not measured"
    assert d.reasons[-1] == f"reject: not measured: {gate} — no evidence to act on (fails closed)"


def test_an_interval_without_bounds_or_a_not_measured_check_fails_closed():
    assert decide(_with(calibrated_ece=Measured(0.02, None, None))).verdict == "reject"
    d = decide(_with(upstream_checks=[CHECKS_OK[0], {"check": "ppo_policy:kl_within_budget",
                                                     "status": "not measured", "detail": "never evaluated"}]))
    assert d.verdict == "reject" and _gate(d, "upstream_checks")["outcome"] == "not measured"
    assert "ppo_policy:kl_within_budget (never evaluated)" in _gate(d, "upstream_checks")["reason"]
    assert decide(_with(upstream_checks=[])).verdict == "reject"  # nothing looked up is no evidence
    assert decide(GateInputs()).verdict == "reject"


def _ope(report):
    return OPERef(report=report, log_uri="ope_log/r.parquet", log_sha256="0" * 64)


def _ppo(**kw):
    return PolicyRef(artifact_id="p" * 64, kind="ppo_policy", dataset_id="d" * 64, **kw)


def _cal(report, human):
    return CalibrationRef(reward_model_id="r" * 64, dataset_id="d" * 64, calibration_artifact_id=None,
                          calibrator=None, report=report, human_correlation=human)


def test_gate_inputs_from_the_release_references_and_old_records_fail_closed():
    ope = _ope({"reliable": True, "reason": None, "judge": {"uplift": {"value": 0.05, "ci_low": 0.02, "ci_high": 0.08}},
                "proxy": {"uplift": {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4}}})
    ppo = _ppo(kl_budget=12.0, measured_kl={"value": 4.0, "ci_low": 3.5, "ci_high": 4.5})
    human = {"spearman": 0.45, "spearman_ci_low": 0.35, "spearman_ci_high": 0.55}
    cal = _cal({"accuracy": 0.72, "accuracy_ci": [0.66, 0.78], "ece_after": 0.03, "ece_after_debiased": 0.02,
                "ece_after_ci": [0.01, 0.04]}, human)
    assert GateInputs.from_release(ope, ppo, cal, CHECKS_OK) == GOOD
    # a record without intervals or without the judge (older code) cannot pass
    old_ope = _ope({"reliable": True, "uplift": {"value": 0.05, "ci_low": 0.02, "ci_high": 0.08}})
    assert decide(GateInputs.from_release(old_ope, ppo, cal, CHECKS_OK)).verdict == "reject"
    old_cal = _cal({"accuracy": 0.72, "ece_after": 0.02}, human)
    assert decide(GateInputs.from_release(ope, ppo, old_cal, CHECKS_OK)).verdict == "reject"
    unmeasured_kl = _ppo(selected_kl=4.0, kl_budget=12.0)  # the trainer's own KL is not evidence
    assert decide(GateInputs.from_release(ope, unmeasured_kl, cal, CHECKS_OK)).verdict == "reject"


def test_to_dict_is_json_and_keeps_thresholds_settings_and_inputs():
    d = decide(_with(kl=Measured.of(float("inf"), 1.0, 2.0)))
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["verdict"] == "reject" and out["verdict"] in VERDICTS
    assert out["thresholds"]["max_kl"] is None and out["settings"]["canary_share"] == 0.1
    assert out["inputs"]["kl"]["value"] is None  # inf is not a measurement
    assert out["gates"][0]["name"] == "upstream_checks" and out["gates"][0]["outcome"] == "pass"


def test_markdown_table_shows_value_interval_threshold_and_outcome():
    d = decide(_with(rm_test_accuracy=Measured(0.62, 0.56, 0.68), ope_reliable=None))
    lines = d.markdown_table().splitlines()
    assert lines[:2] == ["| gate | value | interval | threshold | outcome |", "|---|---|---|---|---|"]
    assert "| rm_test_accuracy | 0.62 | [0.56, 0.68] | ≥ 0.6 | **inconclusive** |" in lines
    assert "| calibrated_ece | 0.02 | [0.01, 0.04] | ≤ 0.05 | pass |" in lines
    assert "| ope_reliable | not measured | — | reliable | **not measured** |" in lines
    assert "| kl | 4 | [3.5, 4.5] | ≤ 12 | pass |" in lines
    assert any(line.startswith("Proxy uplift") for line in lines)


def test_display_rows_summarise_the_upstream_checks_by_status():
    checks = [{"check": "rm_calibration:test_accuracy", "status": "passed"},
              {"check": "rm_calibration:calibrated_ece", "status": "not measured"},
              {"check": "ppo_policy:kl_within_budget", "status": "failed"}]
    rows = {r["gate"]: r for r in decide(_with(upstream_checks=checks)).display_rows()}
    assert rows["upstream_checks"]["value"] == ("1/3 passed; not measured: rm_calibration:calibrated_ece; "
                                                "failed: ppo_policy:kl_within_budget")
    assert rows["upstream_checks"]["outcome"] == "fail" and "kl_within_budget" in rows["upstream_checks"]["reason"]
    no_limit = {r["gate"]: r for r in decide(_with(kl_budget=None)).display_rows()}["kl"]
    assert (no_limit["threshold"], no_limit["outcome"]) == ("—", "not measured")


@pytest.mark.parametrize("kwargs, match", [
    ({"max_kl": -1.0}, "max_kl\n.*greater than 0"),
    ({"max_calibrated_ece": 2.0}, "max_calibrated_ece\n.*less than or equal to 1"),
    ({"min_human_rm_correlation": 1.5}, "min_human_rm_correlation\n.*less than or equal to 1"),
    ({"max_calibrated_ece": float("nan")}, "max_calibrated_ece\n.*finite number"),
    ({"n_bootstrap": 10}, "n_bootstrap\n.*greater than or equal to 100"),
    ({"n_bootstrap": 1000.0}, "n_bootstrap\n.*valid integer"),
])
def test_invalid_thresholds_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReleaseThresholds(**kwargs)


def test_invalid_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="canary_share\n.*greater than 0"):
        DecisionSettings(canary_share=0.0)
    with pytest.raises(ValueError, match="escalation needs more evidence"):
        decide(GOOD, ReleaseThresholds(min_uplift=0.5))
    with pytest.raises(ValueError, match="list of"):
        GateInputs(upstream_checks="quarantine_rate")
    with pytest.raises(ValueError, match="ope_reliable must be True, False or None"):
        GateInputs(ope_reliable="yes")
    with pytest.raises(ValueError, match="Measured"):
        GateInputs(kl=4.0)


def test_the_thresholds_resource_is_the_thresholds_dataclass():
    """One definition per threshold: the Dagster resource mirrors ReleaseThresholds field for field, default for
    default, and no asset config carries a threshold of its own."""
    from rlhf_assets.defs.policy.ppo_policy import PPOPolicyConfig
    from rlhf_assets.defs.release.deployment_decision import DeploymentDecisionConfig
    from rlhf_assets.defs.resources import ReleaseThresholdsResource
    from rlhf_assets.defs.reward.rm_calibration import CalibrationConfig

    fields = {f.name: f.default for f in dataclasses.fields(ReleaseThresholds)}
    resource = ReleaseThresholdsResource()
    assert {k: getattr(resource, k) for k in ReleaseThresholdsResource.model_fields} == fields
    assert resource.thresholds() == ReleaseThresholds()
    assert ReleaseThresholdsResource(max_calibrated_ece=0.08).thresholds().max_calibrated_ece == 0.08
    limits = set(fields) - {"n_bootstrap", "confidence", "seed"}
    for config in (CalibrationConfig, DeploymentDecisionConfig, PPOPolicyConfig):
        assert not limits & set(config.model_fields), config.__name__
    assert set(DeploymentDecisionConfig.model_fields) == {f.name for f in dataclasses.fields(DecisionSettings)}
