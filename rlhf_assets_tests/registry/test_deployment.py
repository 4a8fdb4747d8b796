"""apply_decision: what each verdict moves, rollback, overrides, idempotence."""

import pytest

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.deployment import apply_decision
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
