"""The served policy's runtime guard: which alias holders are escalated and what move follows (pure functions)."""

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from rlhf_assets.automation.policy_guard import (
    GuardStats,
    escalations,
    live_guard_stats,
    live_rows,
    rows_from_cursor,
    rows_to_cursor,
)
from rlhf_assets.automation.settings import AutomationSettings

SETTINGS = AutomationSettings(policy_guard_min_responses=30, max_guarded_share=0.25, max_live_mean_kl=8.0,
                              policy_guard_window=5)
SINCE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def holder(release: str, seq: int) -> dict:
    return {"release": release, "artifacts": {"policy": f"pol-{release}"}, "since": SINCE.isoformat(),
            "history_seq": seq}


ALIASES = {"production": holder("r2", 2), "canary": holder("r3", 3)}
HISTORY = [{"seq": 1, "alias": "production", "release": "r1", "action": "promote"},
           {"seq": 2, "alias": "production", "release": "r2", "action": "promote"},
           {"seq": 3, "alias": "canary", "release": "r3", "action": "canary"}]


def stats(alias: str = "production", release: str = "r2", n: int = 30, guarded: float = 0.0,
          kl: float = 1.0) -> GuardStats:
    return GuardStats(alias, release, f"pol-{release}", n, guarded, kl)


def decide(*s: GuardStats, history: list = HISTORY, limits: dict | None = None):
    return escalations(list(s), ALIASES, history, SETTINGS, limits)


def test_healthy_holders_are_not_escalated():
    assert decide(stats(guarded=0.25, kl=8.0), stats("canary", "r3", guarded=0.0, kl=0.5)) == []


def test_too_few_responses_are_not_judged():
    assert decide(stats(n=29, guarded=1.0, kl=100.0)) == []
    assert len(decide(stats(n=30, guarded=1.0))) == 1


def test_guarded_share_just_over_the_limit_escalates_production_and_rolls_back():
    [e] = decide(stats(guarded=0.26))
    assert (e.alias, e.release) == ("production", "r2")
    assert e.move is not None and (e.move.kind, e.move.release) == ("rollback", "r1")
    assert "guarded" in e.trigger and "KL" not in e.trigger
    assert e.evidence["kl_limit_source"] == "settings"


def test_mean_kl_over_the_settings_limit_escalates():
    [e] = decide(stats(kl=8.01))
    assert "KL" in e.trigger and e.evidence["max_live_mean_kl"] == 8.0


def test_the_release_gate_limit_replaces_the_settings_limit_both_ways():
    assert decide(stats(kl=5.0), limits={"r2": 6.0}) == []
    [e] = decide(stats(kl=6.5), limits={"r2": 6.0})  # under the settings' 8, over its own gate limit
    assert e.evidence["max_live_mean_kl"] == 6.0 and e.evidence["kl_limit_source"] == "release"
    assert decide(stats(kl=9.0), limits={"r2": 12.0}) == []  # a looser gate limit holds too
    assert len(decide(stats(kl=9.0), limits={"other": 12.0})) == 1  # another release's limit is not its own


def test_canary_escalation_ends_the_canary():
    [e] = decide(stats("canary", "r3", guarded=0.5))
    assert e.move is not None and (e.move.kind, e.move.release) == ("end_canary", "r3")


def test_production_without_an_earlier_holder_escalates_without_a_move():
    [e] = decide(stats(guarded=0.5), history=HISTORY[1:])
    assert e.move is None


def test_one_escalation_per_tenure():
    escalated = {"seq": 4, "alias": "production", "release": "r2", "action": "escalate"}
    assert decide(stats(guarded=0.5), history=[*HISTORY, escalated]) == []
    # an escalation from an earlier tenure (before it took the alias at seq 2) does not count
    earlier = {"seq": 1, "alias": "production", "release": "r2", "action": "escalate"}
    assert len(decide(stats(guarded=0.5), history=[earlier, *HISTORY[1:]])) == 1
    # nor does one of the other alias
    other = {"seq": 4, "alias": "canary", "release": "r2", "action": "escalate"}
    assert len(decide(stats(guarded=0.5), history=[*HISTORY, other])) == 1


def log(rows: list[tuple[str, str, str, datetime, bool, float]]) -> pl.DataFrame:
    return pl.DataFrame({"alias": [r[0] for r in rows], "release": [r[1] for r in rows],
                         "policy_id": [r[2] for r in rows], "time": [r[3] for r in rows],
                         "guard_reasons": [["kl"] if r[4] else [] for r in rows], "kl": [r[5] for r in rows]},
                        schema_overrides={"guard_reasons": pl.List(pl.String)})


def test_live_rows_keep_each_holders_newest_responses_in_its_current_tenure():
    t = [SINCE + timedelta(seconds=s) for s in range(10)]
    rows = [("production", "r2", "pol-r2", t[i], False, float(i)) for i in range(8)]
    rows += [("production", "r2", "pol-r2", SINCE - timedelta(seconds=1), True, 99.0),  # before it took the alias
             ("production", "r1", "pol-r1", t[9], True, 99.0),  # the previous holder
             ("canary", "r2", "pol-r2", t[9], True, 99.0),  # same release, another alias
             ("production", "r2", "pol-other", t[9], True, 99.0),  # another policy under the same release
             ("canary", "r3", "pol-r3", t[1], True, 4.0), ("canary", "r3", "pol-r3", t[2], False, 2.0),
             ("canary", "r3", "pol-r3", SINCE - timedelta(hours=1), True, 99.0)]  # an earlier canary tenure
    live = live_rows(pl.DataFrame(), log(rows), ALIASES, SETTINGS.policy_guard_window)
    prod = live.filter(pl.col("alias") == "production")
    assert prod["kl"].to_list() == [3.0, 4.0, 5.0, 6.0, 7.0]  # the newest 5, nothing else
    by_alias = {s.alias: s for s in live_guard_stats(live)}
    assert (by_alias["production"].n, by_alias["production"].guarded_share, by_alias["production"].mean_kl) \
        == (5, 0.0, 5.0)
    assert (by_alias["canary"].n, by_alias["canary"].guarded_share, by_alias["canary"].mean_kl) == (2, 0.5, 3.0)


def test_live_rows_carry_over_the_cursor():
    t = [SINCE + timedelta(seconds=s) for s in range(4)]
    first = live_rows(pl.DataFrame(), log([("production", "r2", "pol-r2", t[0], True, 1.0)]), ALIASES, 5)
    kept = rows_from_cursor(rows_to_cursor(first))
    assert kept.equals(first)
    second = live_rows(kept, log([("production", "r2", "pol-r2", t[1], False, 3.0)]), ALIASES, 5)
    [s] = live_guard_stats(second)
    assert (s.n, s.guarded_share, s.mean_kl) == (2, 0.5, 2.0)


@pytest.mark.parametrize("aliases", [{"production": None, "canary": None},
                                     {"production": {**holder("r2", 2), "artifacts": {"reward_model": "rm"}}}])
def test_live_rows_without_a_policy_holder_are_empty(aliases):
    rows = log([("production", "r2", "pol-r2", SINCE, True, 1.0)])
    assert live_rows(pl.DataFrame(), rows, aliases, 5).height == 0
