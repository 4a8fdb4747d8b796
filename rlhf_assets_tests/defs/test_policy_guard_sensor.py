"""The policy guard sensor against a real instance and a real policy-serving log: healthy live figures → nothing; a
production release whose responses the guard keeps catching → an `escalate` entry for a person and a rollback to the
release before it (carried out: production moves back); no second escalation for the same tenure; a canary over its
allowed KL → escalated and ended; a first release with nothing to roll back to → escalated, production stays."""

import numpy as np
import pytest

from rlhf_assets.definitions import defs
from rlhf_assets.defs.sensors.ticking import carry_out, evaluate
from rlhf_assets.policy_serving.log import PolicyServingLog
from rlhf_assets.references import DecisionRef, write_reference
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.storage import Storage

pytestmark = pytest.mark.slow  # runs Dagster jobs

R1, R2, R3 = "r20250601-2359", "r20250602-2359", "r20250603-2359"
SENSOR = "policy_guard_sensor"


def _arts(release: str) -> dict[str, str]:
    tag = {R1: "a", R2: "b", R3: "c"}[release]
    return {"policy": tag * 64, "sft_policy": "s" * 64, "reward_model": "r" * 64}


def _serve(storage, release, alias, n, guarded_share=0.0, kl=1.0, seed=0):
    """n logged responses of ``release`` in ``alias``, through the service's own log writer."""
    from datetime import UTC, datetime

    rng = np.random.default_rng(seed)
    log = PolicyServingLog(storage, flush_rows=1000, flush_s=60, buffer_rows=10_000)
    rows = []
    for i in range(n):
        guarded = rng.random() < guarded_share
        lp = [-1.0, -0.5]
        rows.append({"prompt": "p", "prompt_token_ids": [5], "response": "r", "response_token_ids": [7, 2],
                     "behavior_token_logprobs": lp, "behavior_logprob": sum(lp), "reward": 0.1, "human_label": None,
                     "policy_id": _arts(release)["policy"], "temperature": 1.0, "max_new_tokens": 12,
                     "time": datetime.now(UTC), "request_id": f"q{i}", "item": 0, "key_hash": None,
                     "release": release, "alias": alias, "reference_id": "s" * 64,
                     "kl": float(kl + rng.normal(0, 0.1)), "served": "reference" if guarded else "policy",
                     "guard_reasons": ["kl: over"] if guarded else [], "served_response": "r", "latency_ms": 5.0})
    log.append(rows)
    log.close()


@pytest.fixture
def registry_and_instance(storage_root, dagster_instance):
    storage = Storage(str(storage_root))
    for release in (R1, R2, R3):
        dagster_instance.add_dynamic_partitions("release", [release])
        write_reference(storage, "deployment_decision", release,
                        DecisionRef(release=release, verdict="promote", artifacts=_arts(release)))
    registry = Registry(storage)
    registry.set_alias("production", R1, _arts(R1), action="promote", reason="test", actor="test")
    return storage, registry, dagster_instance


def test_guarded_production_is_escalated_and_rolled_back_once(registry_and_instance):
    storage, registry, instance = registry_and_instance
    assert not evaluate(SENSOR, instance, None, defs()).run_requests  # nothing served yet
    registry.set_alias("production", R2, _arts(R2), action="promote", reason="test", actor="test")
    _serve(storage, R2, "production", 60, guarded_share=0.05, kl=1.0)
    healthy = evaluate(SENSOR, instance, None, defs())
    assert not healthy.run_requests and "7% guarded" in healthy.result.skip_reason.skip_message
    assert all(e["action"] != "escalate" for e in registry.history())
    _serve(storage, R2, "production", 200, guarded_share=0.6, kl=1.0, seed=1)  # the guard now catches most
    tick = evaluate(SENSOR, instance, None, defs())
    (run,) = tick.run_requests
    assert run.job_name == "apply_release_decision" and run.partition_key == R1
    assert run.run_config["ops"]["production_release"]["config"]["mode"] == "rollback"
    escalated = registry.history()[-1]
    assert escalated["action"] == "escalate" and escalated["release"] == R2 and escalated["actor"] == SENSOR
    assert escalated["evidence"]["guarded_share"] > 0.2 and escalated["evidence"]["n"] == 200
    assert "rollback to " + R1 in escalated["reason"]
    assert registry.current("production")["release"] == R2   # an escalate entry moves nothing by itself
    again = evaluate(SENSOR, instance, None, defs())
    assert not again.run_requests                             # one escalation per tenure
    carry_out(tick, instance, defs())
    assert tick.runs[0].success
    holder = registry.current("production")
    assert holder["release"] == R1 and holder["artifacts"]["policy"] == _arts(R1)["policy"]
    assert registry.history()[-1]["action"] == "rollback" and SENSOR in registry.history()[-1]["reason"]


def test_canary_over_its_kl_is_escalated_and_ended_and_a_first_release_stays(registry_and_instance):
    storage, registry, instance = registry_and_instance
    registry.set_alias("canary", R3, _arts(R3), action="canary", reason="test", actor="test", share=0.1)
    _serve(storage, R3, "canary", 40, guarded_share=0.0, kl=25.0)       # nothing guarded, but far from its reference
    _serve(storage, R1, "production", 40, guarded_share=0.9, kl=30.0, seed=2)  # R1 has no release before it
    tick = evaluate(SENSOR, instance, None, defs())
    (run,) = tick.run_requests
    assert run.partition_key == R3 and run.run_config["ops"]["production_release"]["config"]["mode"] == "end_canary"
    notes = [e for e in registry.history() if e["action"] == "escalate"]
    assert {e["release"] for e in notes} == {R1, R3}
    assert "mean KL" in next(e for e in notes if e["release"] == R3)["reason"]
    assert "production stays" in next(e for e in notes if e["release"] == R1)["reason"]
    carry_out(tick, instance, defs())
    assert tick.runs[0].success
    aliases = registry.aliases()
    assert aliases["canary"] is None and aliases["production"]["release"] == R1


def test_a_tick_reads_only_the_log_files_written_since_the_last_one(registry_and_instance, monkeypatch):
    """The cursor: the second tick reads just the new file, a tick with nothing new reads none, and the figures
    still cover the release's earlier responses (the cursor carries its newest rows)."""
    storage, registry, instance = registry_and_instance
    read: list[str] = []
    original = Storage.read_parquet

    def counting(self, path, *args, **kwargs):
        if "serving-logs/policy" in str(path):
            read.append(str(path).rsplit("/", 1)[-1])
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Storage, "read_parquet", counting)
    files = lambda: sorted(p.name for p in storage.path("serving-logs", "policy").rglob("*.parquet"))  # noqa: E731
    _serve(storage, R1, "production", 40, guarded_share=0.0, kl=1.0)
    first = evaluate(SENSOR, instance, None, defs())
    assert sorted(read) == files() and len(read) == 1
    assert "on 40" in first.result.skip_reason.skip_message
    before = set(files())
    _serve(storage, R1, "production", 25, guarded_share=0.0, kl=1.0, seed=3)
    read.clear()
    second = evaluate(SENSOR, instance, first.cursor, defs())
    assert read == sorted(set(files()) - before) and len(read) == 1  # only the new file
    assert "on 65" in second.result.skip_reason.skip_message         # 40 carried + 25 new
    read.clear()
    third = evaluate(SENSOR, instance, second.cursor, defs())
    assert read == [] and "on 65" in third.result.skip_reason.skip_message
    _serve(storage, R1, "production", 200, guarded_share=0.9, kl=1.0, seed=4)
    read.clear()
    fourth = evaluate(SENSOR, instance, third.cursor, defs())
    assert len(read) == 1
    escalated = registry.history()[-1]  # the window (200) now holds only guarded-heavy rows: escalated
    assert escalated["action"] == "escalate" and escalated["evidence"]["n"] == 200
    assert not fourth.run_requests  # R1 is the first release: nothing to roll back to


def test_the_live_mean_kl_allowed_is_the_limit_the_release_gate_held_it_to(registry_and_instance):
    """A release whose ppo_policy recorded its gate's KL limit is escalated over THAT limit, not the global
    max_live_mean_kl (10 nats): 14 nats live is fine under a 30-nat gate limit, and over a 12-nat one."""
    from rlhf_assets.references import PolicyRef

    storage, registry, instance = registry_and_instance

    def gate_limit(release, limit):
        write_reference(storage, "ppo_policy", release, PolicyRef(
            artifact_id=_arts(release)["policy"], kind="ppo_policy", dataset_id="d" * 64, kl_budget=limit,
            measured_kl={"value": 3.0, "ci_low": 2.5, "ci_high": 3.5, "limit": limit}))

    gate_limit(R1, 30.0)
    _serve(storage, R1, "production", 40, guarded_share=0.0, kl=14.0)
    calm = evaluate(SENSOR, instance, None, defs())
    assert not calm.run_requests and all(e["action"] != "escalate" for e in registry.history())
    gate_limit(R1, 12.0)
    evaluate(SENSOR, instance, None, defs())
    escalated = registry.history()[-1]
    assert escalated["action"] == "escalate" and escalated["release"] == R1
    assert "> 12 (the release's gate limit)" in escalated["reason"]
    assert escalated["evidence"]["max_live_mean_kl"] == 12.0 and escalated["evidence"]["kl_limit_source"] == "release"
