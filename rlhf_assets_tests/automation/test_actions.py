"""correlation_actions and previous_production: what the correlation sensor decides, from hand-built evidence and
registry state (no Dagster, no training)."""

import pytest

from rlhf_assets.automation.actions import Action, correlation_actions, previous_production
from rlhf_assets.automation.correlation import Correlation
from rlhf_assets.automation.settings import AutomationSettings

# thresholds chosen exactly representable in binary, so "exactly at" is exactly at
SETTINGS = AutomationSettings(min_human_rm_correlation=0.5, rollback_correlation=0.25, max_correlation_drop=0.25,
                              canary_min_audits=30)
PROD_RM, CANARY_RM = "rm-prod", "rm-canary"


def holder(release: str, rm: str | None, seq: int = 1) -> dict:
    artifacts = {"reward_model": rm} if rm else {"policy": f"policy-{release}"}
    return {"release": release, "artifacts": artifacts, "since": "2026-01-01T00:00:00Z", "history_seq": seq}


def entry(seq: int, alias: str, release: str, action: str = "promote") -> dict:
    return {"seq": seq, "alias": alias, "release": release, "action": action}


ALIASES = {"production": holder("r2", PROD_RM, 2), "canary": holder("r3", CANARY_RM, 3)}
HISTORY_WITH_EARLIER = [entry(1, "production", "r1"), entry(2, "production", "r2"), entry(3, "canary", "r3", "canary")]
HISTORY_FIRST_RELEASE = [entry(2, "production", "r2"), entry(3, "canary", "r3", "canary")]


def corr(artifact_id: str, *, spearman: float | None = 0.6, ci: tuple[float | None, float | None] = (0.55, 0.65),
         n: int = 100, baseline: float | None = None) -> Correlation:
    return Correlation(artifact_id, None, None, n, spearman, ci[0], ci[1], 0.8, baseline)


def decide(*results: Correlation, aliases: dict = ALIASES, history: list = HISTORY_WITH_EARLIER,
           drift_ok: dict | None = None) -> list[Action]:
    return correlation_actions(list(results), aliases, history, SETTINGS, drift_ok or {})


def kinds(actions: list[Action]) -> list[tuple[str, str | None]]:
    return [(a.kind, a.release) for a in actions]


# production ---------------------------------------------------------------------------------------------------------

def test_production_under_rollback_threshold_with_an_earlier_release_rolls_back_to_it():
    actions = decide(corr(PROD_RM, spearman=0.1, ci=(0.0, 0.24)))
    assert kinds(actions) == [("rollback", "r1")]
    assert actions[0].evidence["artifact_id"] == PROD_RM and "r2" in actions[0].trigger


def test_production_under_rollback_threshold_without_an_earlier_release_retrains_instead():
    actions = decide(corr(PROD_RM, spearman=0.1, ci=(0.0, 0.24)), history=HISTORY_FIRST_RELEASE)
    assert kinds(actions) == [("retrain", None)]


def test_production_upper_bound_exactly_at_the_rollback_threshold_retrains_not_rolls_back():
    assert kinds(decide(corr(PROD_RM, spearman=0.1, ci=(0.0, 0.25)))) == [("retrain", None)]


def test_production_upper_bound_under_the_minimum_retrains():
    actions = decide(corr(PROD_RM, spearman=0.4, ci=(0.3, 0.49)))
    assert kinds(actions) == [("retrain", None)]
    assert actions[0].evidence["ci_high"] == 0.49


def test_production_upper_bound_exactly_at_the_minimum_asks_for_nothing():
    assert decide(corr(PROD_RM, spearman=0.45, ci=(0.4, 0.5))) == []


@pytest.mark.parametrize(("baseline", "expected"), [
    (0.875, [("retrain", None)]),  # a drop of 0.275: over 0.25
    (0.8125, []),                  # 0.2125: under
    (0.85, []),                    # exactly 0.25 (0.85 - 0.6 is 0.25 in binary too): not over
    (None, []),                    # no calibration baseline: no drop rule
])
def test_production_drop_from_its_baseline(baseline, expected):
    assert kinds(decide(corr(PROD_RM, spearman=0.6, ci=(0.55, 0.65), baseline=baseline))) == expected


def test_production_drop_rule_applies_without_an_interval():
    assert kinds(decide(corr(PROD_RM, spearman=0.5, ci=(None, None), baseline=0.9))) == [("retrain", None)]
    assert decide(corr(PROD_RM, spearman=0.5, ci=(None, None), baseline=None)) == []


def test_rollback_outranks_retrain_and_one_action_per_version():
    actions = decide(corr(PROD_RM, spearman=0.0, ci=(-0.1, 0.1), baseline=0.9))
    assert kinds(actions) == [("rollback", "r1")]


def test_healthy_production_asks_for_nothing():
    assert decide(corr(PROD_RM, spearman=0.7, ci=(0.6, 0.8), baseline=0.75)) == []


# canary -------------------------------------------------------------------------------------------------------------

def test_canary_graduates_with_its_interval_above_and_its_own_drift_checked():
    actions = decide(corr(CANARY_RM, ci=(0.55, 0.7)), drift_ok={CANARY_RM: True})
    assert kinds(actions) == [("graduate", "r3")]
    assert actions[0].evidence["n"] == 100


def test_canary_lower_bound_exactly_at_the_minimum_graduates():
    assert kinds(decide(corr(CANARY_RM, ci=(0.5, 0.7)), drift_ok={CANARY_RM: True})) == [("graduate", "r3")]


@pytest.mark.parametrize("drift_ok", [
    {},                                  # never checked: no evidence → fail closed
    {CANARY_RM: False},                  # checked: alarm or too few windows
    {PROD_RM: True},                     # production's traffic is fine, the canary's was never checked
    {CANARY_RM: None},
])
def test_canary_without_its_own_drift_evidence_does_not_graduate(drift_ok):
    assert decide(corr(CANARY_RM, ci=(0.6, 0.8)), drift_ok=drift_ok) == []


def test_canary_with_too_few_audits_asks_for_nothing_either_way():
    few = SETTINGS.canary_min_audits - 1
    assert decide(corr(CANARY_RM, n=few, ci=(0.6, 0.8)), drift_ok={CANARY_RM: True}) == []
    assert decide(corr(CANARY_RM, n=few, spearman=0.0, ci=(-0.2, 0.2))) == []


def test_canary_with_exactly_the_minimum_audits_is_judged():
    n = SETTINGS.canary_min_audits
    assert kinds(decide(corr(CANARY_RM, n=n, ci=(0.6, 0.8)), drift_ok={CANARY_RM: True})) == [("graduate", "r3")]
    assert kinds(decide(corr(CANARY_RM, n=n, spearman=0.0, ci=(-0.2, 0.2)))) == [("end_canary", "r3")]


def test_canary_interval_wholly_below_ends_it_drift_or_not():
    for ok in ({}, {CANARY_RM: True}):
        actions = decide(corr(CANARY_RM, spearman=0.3, ci=(0.2, 0.49)), drift_ok=ok)
        assert kinds(actions) == [("end_canary", "r3")]


@pytest.mark.parametrize("ci", [(0.4, 0.6), (0.49, 0.5), (0.4, 0.5)])
def test_canary_interval_straddling_the_threshold_asks_for_nothing(ci):
    assert decide(corr(CANARY_RM, spearman=0.5, ci=ci), drift_ok={CANARY_RM: True}) == []


def test_canary_rules_never_roll_back_or_retrain_and_use_no_baseline():
    actions = decide(corr(CANARY_RM, spearman=0.0, ci=(-0.3, 0.0), baseline=0.9), drift_ok={CANARY_RM: True})
    assert kinds(actions) == [("end_canary", "r3")]


# neither, unmeasured, several -----------------------------------------------------------------------------------------

def test_unmeasured_version_asks_for_nothing_even_with_an_interval():
    assert decide(corr(PROD_RM, spearman=None, ci=(0.0, 0.1), baseline=0.9)) == []
    assert decide(corr(CANARY_RM, spearman=None, ci=(0.6, 0.8)), drift_ok={CANARY_RM: True}) == []


def test_a_version_neither_in_production_nor_canary_asks_for_nothing():
    old = corr("rm-old", spearman=0.0, ci=(-0.2, 0.05), baseline=0.9)
    good = corr("rm-other", ci=(0.7, 0.9))
    assert decide(old, good, drift_ok={"rm-old": True, "rm-other": True}) == []


def test_no_canary_and_no_production_holders():
    assert decide(corr(CANARY_RM, ci=(0.6, 0.8)), aliases={"production": ALIASES["production"], "canary": None},
                  drift_ok={CANARY_RM: True}) == []
    assert decide(corr(PROD_RM, spearman=0.0, ci=(-0.2, 0.05)), aliases={"production": None, "canary": None},
                  history=[]) == []


def test_holder_without_a_reward_model_matches_nothing():
    aliases = {"production": holder("r2", None, 2), "canary": holder("r3", None, 3)}
    assert decide(corr(PROD_RM, spearman=0.0, ci=(-0.2, 0.05)), corr(CANARY_RM, ci=(0.6, 0.8)), aliases=aliases,
                  drift_ok={CANARY_RM: True}) == []


def test_both_versions_judged_in_one_pass():
    actions = decide(corr(PROD_RM, spearman=0.4, ci=(0.3, 0.45)), corr(CANARY_RM, ci=(0.6, 0.8)),
                     drift_ok={CANARY_RM: True})
    assert kinds(actions) == [("retrain", None), ("graduate", "r3")]


def test_run_key_names_the_move_and_the_registry_state():
    action = Action("rollback", "t", {}, "r1")
    assert action.run_key(7) == "rollback:r1:7"
    assert Action("retrain", "t").run_key(None) == "retrain:-:0"
    assert action.run_key(7) != action.run_key(8)


# previous_production --------------------------------------------------------------------------------------------------

def test_previous_production_is_the_holder_before_the_current_one():
    history = [entry(1, "production", "r1"), entry(2, "canary", "r3", "canary"), entry(3, "production", "r2")]
    assert previous_production(history, "r2") == "r1"


def test_previous_production_skips_clears_escalations_canaries_and_the_current_holder():
    history = [entry(1, "production", "r1"), entry(2, "production", "r2"),
               entry(3, "production", "r9", "escalate"), entry(4, "production", "r8", "clear"),
               entry(5, "canary", "r7", "canary"), entry(6, "production", "r2", "override")]
    assert previous_production(history, "r2") == "r1"


def test_previous_production_counts_rollbacks_and_overrides_as_holders():
    history = [entry(1, "production", "r1"), entry(2, "production", "r2", "override"), entry(3, "production", "r3")]
    assert previous_production(history, "r3") == "r2"
    history += [entry(4, "production", "r2", "rollback"), entry(5, "production", "r4")]
    assert previous_production(history, "r4") == "r2"  # restored by the rollback, then superseded normally


def test_previous_production_none_without_an_earlier_holder():
    assert previous_production([], "r1") is None
    assert previous_production([entry(1, "production", "r1")], "r1") is None
    assert previous_production([entry(1, "production", "r0", "escalate"), entry(2, "canary", "r5", "canary"),
                                entry(3, "production", "r1")], "r1") is None


def test_previous_production_with_no_current_holder_is_the_last_one():
    history = [entry(1, "production", "r1"), entry(2, "production", "r2"), entry(3, "production", None, "clear")]
    assert previous_production(history, None) == "r2"


def test_previous_production_never_returns_to_a_release_that_was_rolled_back_from():
    """r1, r2 promoted, r2 rolled back to r1: when r1 fails too there is no good release to return to (r2 failed
    already); returning to r2 would swing production between the two."""
    history = [entry(1, "production", "r1"), entry(2, "production", "r2"), entry(3, "production", "r1", "rollback")]
    assert previous_production(history, "r1") is None
    aliases = {"production": holder("r1", PROD_RM, 3), "canary": None}
    assert kinds(decide(corr(PROD_RM, spearman=0.0, ci=(-0.2, 0.05)), aliases=aliases, history=history)) \
        == [("retrain", None)]
    # r0 before them was good: that is where production goes
    assert previous_production([entry(0, "production", "r0"), *history], "r1") == "r0"
    # a release rolled back from and later promoted again, then superseded normally, is good again
    again = [*history, entry(4, "production", "r2"), entry(5, "production", "r3")]
    assert previous_production(again, "r3") == "r2"
