"""apply_decision: what each verdict moves, rollback, overrides, idempotence; rollback(): back to what the history
says a release held in production."""

import pytest

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.deployment import NeverInProduction, apply_decision, rollback
from rlhf_assets.storage import Storage


def decision(verdict, n, share=None):
    d = {"verdict": verdict, "reasons": [f"reason {n}"],
         "artifacts": {"policy": f"{n:064x}", "reward_model": f"{n + 100:064x}"}}
    if share is not None:
        d["canary_share"] = share
    return d


@pytest.fixture
def storage(tmp_path):
    return Storage(str(tmp_path))


def test_promote_promote_then_rollback(storage):
    r1, r2 = decision("promote", 1), decision("promote", 2)
    assert apply_decision(storage, "r20250601-0000", r1)["action"] == "promote"
    assert apply_decision(storage, "r20250602-0000", r2)["action"] == "promote"
    back = apply_decision(storage, "r20250601-0000", r1)
    assert back["action"] == "rollback" and "rollback from r20250602-0000" in back["reason"]
    reg = Registry(storage)
    assert reg.current("production")["artifacts"] == r1["artifacts"]
    history = reg.history()
    assert [h["action"] for h in history] == ["promote", "promote", "rollback"]
    assert history[-1]["from_release"] == "r20250602-0000"


def test_reapplying_the_same_decision_changes_nothing(storage):
    apply_decision(storage, "r20250601-0000", decision("promote", 1))
    again = apply_decision(storage, "r20250601-0000", decision("promote", 1))
    assert again["action"] == "unchanged" and len(Registry(storage).history()) == 1


def test_canary_sets_the_canary_alias_and_promotion_ends_it(storage):
    out = apply_decision(storage, "r20250601-0000", decision("canary", 1, share=0.2))
    reg = Registry(storage)
    assert out["action"] == "canary" and reg.current("canary")["share"] == 0.2
    assert reg.current("production") is None
    apply_decision(storage, "r20250601-0000", decision("promote", 1))
    assert reg.current("production")["release"] == "r20250601-0000" and reg.current("canary") is None


@pytest.mark.parametrize("verdict", ["reject", "escalate"])
def test_reject_and_escalate_move_nothing_without_an_approved_override(storage, verdict):
    out = apply_decision(storage, "r20250601-0000", decision(verdict, 1))
    assert out["action"] == "none" and Registry(storage).history() == []
    assert apply_decision(storage, "r20250601-0000", decision(verdict, 1), override_reason="hotfix")["action"] == "none"
    out = apply_decision(storage, "r20250601-0000", decision(verdict, 1), override_reason="hotfix", approver="ana")
    entry = Registry(storage).history()[-1]
    assert out["action"] == "override" and entry["actor"] == "ana" and "hotfix" in entry["reason"]


# rollback: back to exactly what the release last held IN PRODUCTION, read from the history -------------------

R1, R2, R3 = "r20250601-0000", "r20250602-0000", "r20250603-0000"


def test_rollback_restores_what_an_override_put_in_production(storage):
    """r1 was rejected and went live only by an approved override; rolling back to it must restore those artifacts
    (re-applying its decision would move nothing: verdict reject)."""
    overridden = decision("reject", 1)
    apply_decision(storage, R1, overridden, override_reason="hotfix", approver="ana")
    apply_decision(storage, R2, decision("promote", 2))
    assert apply_decision(storage, R1, overridden)["action"] == "none"  # the decision alone cannot bring it back
    back = rollback(storage, R1, actor="oncall")
    reg = Registry(storage)
    assert back["action"] == "rollback" and back["artifacts"] == overridden["artifacts"]
    assert reg.current("production")["release"] == R1
    assert reg.current("production")["artifacts"] == overridden["artifacts"]
    last = reg.history()[-1]
    assert (last["action"], last["from_release"], last["actor"]) == ("rollback", R2, "oncall")
    assert back["restored_from"] == 1 and "rollback from r20250602-0000" in last["reason"]


def test_rollback_uses_the_history_not_the_current_decision(storage):
    """r1's decision was later rematerialized with other artifacts: rollback restores what was live, not those."""
    apply_decision(storage, R1, decision("promote", 1))
    apply_decision(storage, R2, decision("promote", 2))
    rollback(storage, R1)
    assert Registry(storage).current("production")["artifacts"] == decision("promote", 1)["artifacts"]
    # and re-applying a re-decided release with new artifacts is a promotion, not a rollback
    apply_decision(storage, R2, decision("promote", 2))
    assert apply_decision(storage, R1, decision("promote", 7))["action"] == "promote"


def test_rollback_to_a_rollback_restores_the_same_artifacts_and_ends_its_canary(storage):
    apply_decision(storage, R1, decision("promote", 1))
    apply_decision(storage, R2, decision("promote", 2))
    rollback(storage, R1)
    apply_decision(storage, R3, decision("promote", 3))
    apply_decision(storage, R1, decision("canary", 9, share=0.3))  # r1 re-decided: canary of other artifacts
    out = rollback(storage, R1)
    reg = Registry(storage)
    assert out["action"] == "rollback" and out["restored_from"] == 3  # the entry written by the first rollback
    assert reg.current("production")["artifacts"] == decision("promote", 1)["artifacts"]
    assert reg.current("canary") is None
    again = rollback(storage, R1)
    assert again["action"] == "unchanged" and again["entry"] is None
    assert [h["action"] for h in reg.history()][-2:] == ["rollback", "clear"]


def test_rollback_to_a_canary_only_release_moves_nothing_and_names_those_that_did(storage):
    apply_decision(storage, R1, decision("promote", 1))
    apply_decision(storage, R2, decision("promote", 2))
    apply_decision(storage, R3, decision("canary", 3, share=0.1))
    before = Registry(storage).history()
    with pytest.raises(NeverInProduction) as err:
        rollback(storage, R3)
    assert err.value.held == [R1, R2]
    assert f"releases that did: {R1}, {R2}" in str(err.value) and R3 in str(err.value)
    assert Registry(storage).history() == before


def test_rollback_to_a_never_deployed_release_raises(storage):
    with pytest.raises(NeverInProduction, match="no release has held production yet"):
        rollback(storage, R1)
    apply_decision(storage, R1, decision("promote", 1))
    with pytest.raises(NeverInProduction, match=f"releases that did: {R1}"):
        rollback(storage, R2)
