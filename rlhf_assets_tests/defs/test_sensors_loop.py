"""The human–RM correlation sensor against a real instance and real serving logs and audits: no drift → nothing;
label drift → one retrain (a new release partition) and no second one in the cooldown; after a promotion, a collapse
→ an automatic rollback to the last good release, recorded in the registry; a canary with good live evidence
graduates, one with bad evidence is rolled back out of canary."""

import dataclasses

import numpy as np
import pytest

from rlhf_assets.automation.drift_state import write_state
from rlhf_assets.automation.ledger import read_ledger
from rlhf_assets.definitions import defs
from rlhf_assets.defs.sensors.ticking import carry_out, evaluate
from rlhf_assets.references import DecisionRef, write_reference
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.reward.data import EncodedSequence
from rlhf_assets.serving.traffic import Traffic, pairs_for, write_log_directly
from rlhf_assets.storage import Storage

pytestmark = pytest.mark.slow  # runs Dagster jobs

R1, R2 = "r20250601-2359", "r20250602-2359"


@dataclasses.dataclass
class KnowingModel:
    """Stands in for a served reward model: it scores the data's better responses high (it agrees with humans)."""

    artifact_id: str
    better: frozenset
    calibrator = None

    def encode(self, prompt, response):
        seq = EncodedSequence([1, 2, 3], [0, 0, 1], None, 1)
        seq.text = response  # type: ignore[attr-defined]
        return seq

    def run(self, seqs):
        rng = np.random.default_rng(len(seqs))
        scores = np.array([1.0 if s.text in self.better else 0.0 for s in seqs]) + rng.normal(0, 0.3, len(seqs))
        return scores, np.zeros((len(seqs), 32), np.float32)

    def probability(self, margin):
        return 1.0 / (1.0 + np.exp(-np.asarray(margin)))


@pytest.fixture
def loop(storage_root, dagster_instance):
    storage = Storage(str(storage_root))
    better = frozenset(p.better for p in pairs_for("none"))
    models = {name: KnowingModel(name * 64, better) for name in ("a", "b")}
    for release in (R1, R2):
        dagster_instance.add_dynamic_partitions("release", [release])
        arts = {"reward_model": models["a" if release == R1 else "b"].artifact_id, "policy": "p" * 64}
        write_reference(storage, "deployment_decision", release, DecisionRef(release=release, verdict="promote",
                                                                            artifacts=arts))
    Registry(storage).set_alias("production", R1, {"reward_model": models["a"].artifact_id, "policy": "p" * 64},
                                action="promote", reason="test", actor="test")
    return storage, models, dagster_instance


def _serve(storage, model, release, alias, drift, items=120, seed=0):
    return write_log_directly(storage, model, Traffic(drift=drift, seed=seed, audit_share=0.5), items=items,
                              release=release, alias=alias)


def test_no_drift_nothing_then_label_drift_one_retrain_in_a_cooldown(loop):
    storage, models, instance = loop
    empty = evaluate("human_rm_correlation_sensor", instance, None, defs())
    assert not empty.run_requests and not empty.asset_events
    _serve(storage, models["a"], R1, "production", "none")
    good = evaluate("human_rm_correlation_sensor", instance, empty.cursor, defs())
    assert not good.run_requests
    event, observed = good.asset_events  # the check's evaluation, and an observation of the day
    assert event.passed and event.metadata["spearman"].value > 0.5 and event.metadata["n"].value >= 30
    assert observed.partition == event.metadata["day"].value and observed.metadata["n"].value == event.metadata["n"].value
    _serve(storage, models["a"], R1, "production", "labels", items=400, seed=1)
    bad = evaluate("human_rm_correlation_sensor", instance, good.cursor, defs())
    (partition,) = bad.result.dynamic_partitions_requests
    (run,) = bad.run_requests
    assert run.job_name == "release_chain" and run.partition_key == partition.partition_keys[0]
    assert run.partition_key.endswith("-corr") and run.tags["rlhf/trigger"] == "human_rm_correlation_sensor"
    assert not bad.asset_events[0].passed
    assert read_ledger(storage)["retrains"][0]["release"] == run.partition_key
    again = evaluate("human_rm_correlation_sensor", instance, bad.cursor, defs())
    assert not again.run_requests  # the same episode: cooldown


def test_a_collapse_after_a_promotion_rolls_back_to_the_last_good_release(loop):
    storage, models, instance = loop
    registry = Registry(storage)
    registry.set_alias("production", R2, {"reward_model": models["b"].artifact_id, "policy": "p" * 64},
                       action="promote", reason="test", actor="test")
    _serve(storage, models["b"], R2, "production", "labels", items=400)
    tick = evaluate("human_rm_correlation_sensor", instance, None, defs())
    (run,) = tick.run_requests
    assert run.job_name == "apply_release_decision" and run.partition_key == R1
    assert run.run_config["ops"]["production_release"]["config"]["mode"] == "rollback"
    carry_out(tick, instance, defs())
    assert tick.runs[0].success
    holder = registry.current("production")
    assert holder["release"] == R1 and holder["artifacts"]["reward_model"] == models["a"].artifact_id
    last = registry.history()[-1]
    assert last["action"] == "rollback" and "human_rm_correlation_sensor" in last["reason"]
    assert last["actor"] == "human_rm_correlation_sensor"


@pytest.mark.parametrize("drift, expected", [("none", "graduate"), ("labels", "end_canary")])
def test_canary_graduates_on_good_live_evidence_and_ends_on_bad(loop, drift, expected):
    storage, models, instance = loop
    registry = Registry(storage)
    registry.set_alias("canary", R2, {"reward_model": models["b"].artifact_id, "policy": "p" * 64},
                       action="canary", reason="test", actor="test", share=0.2)
    write_state(storage, {models["b"].artifact_id: {"windows": 3, "alarm": False}})  # the drift sensor saw no drift
    _serve(storage, models["b"], R2, "canary", drift, items=400)
    tick = evaluate("human_rm_correlation_sensor", instance, None, defs())
    (run,) = tick.run_requests
    assert run.partition_key == R2 and run.run_config["ops"]["production_release"]["config"]["mode"] == expected
    carry_out(tick, instance, defs())
    assert tick.runs[0].success
    aliases = registry.aliases()
    assert aliases["canary"] is None
    assert aliases["production"]["release"] == (R2 if expected == "graduate" else R1)
    assert any("live evidence" in e["reason"] for e in registry.history()[-2:])


def test_drift_sensor_no_drift_nothing_then_persistent_drift_one_retrain(tmp_path, monkeypatch, dagster_instance):
    from rlhf_assets.automation.drift_state import read_state
    from rlhf_assets.automation.drift_watch import reference_sample, store_reference
    from rlhf_assets.evaluation.drift import DriftSettings
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.serving.engine import ServedModel
    from rlhf_assets_tests.serving.service_support import make_store

    serve = make_store(tmp_path / "root")
    monkeypatch.setenv("RLHF_STORAGE_ROOT", str(serve.root))
    storage = serve.storage
    serve.promote(R1, serve.rm[0])
    model = ServedModel(ArtifactStore(storage).get(serve.rm[0]), serve.rm[0])
    reference = reference_sample(model, [(p.prompt, p.better, p.worse) for p in pairs_for("none", seed=99)[:600]])
    store_reference(storage, serve.rm[0], reference, DriftSettings(window=200, min_window=100, pair_window=100,
                                                                   null_windows=30))
    tick = evaluate("drift_sensor", dagster_instance, None, defs())
    assert not tick.asset_events and not tick.run_requests  # no traffic yet
    for seed in range(8):  # 4 windows: the version's production reference (the default drift_reference_windows)
        write_log_directly(storage, model, Traffic("none", seed=seed), items=50, release=R1)  # 100 rows each
    tick = evaluate("drift_sensor", dagster_instance, tick.cursor, defs())
    assert [e.metadata["measurement"].value for e in tick.asset_events] == ["drift reference window"] * 4
    assert read_state(storage)[serve.rm[0]]["phase"] == "monitoring"
    for seed in range(2):
        write_log_directly(storage, model, Traffic("none", seed=20 + seed), items=50, release=R1)
    tick = evaluate("drift_sensor", dagster_instance, tick.cursor, defs())
    checks = [e for e in tick.asset_events if hasattr(e, "check_name")]
    assert sorted(e.check_name for e in checks) == ["prompt_drift", "score_drift"] and all(e.passed for e in checks)
    (observed,) = [e for e in tick.asset_events if not hasattr(e, "check_name")]
    assert observed.metadata["alarm"].value is False and observed.partition
    assert not tick.run_requests and read_state(storage)[serve.rm[0]]["windows"] == 5
    state = read_state(storage)[serve.rm[0]]
    assert len(state["shifts"]) == 1 and state["pooled_z"] is None  # the pooled location rule needs 3 windows
    (score,) = [e for e in checks if e.check_name == "score_drift"]
    assert "mean_shift" in score.metadata and score.metadata["pooled_mean_shift_z"].value is None
    for seed in range(4):  # two windows of drifted prompts: 2 of the last 3 windows alarm → persistent
        write_log_directly(storage, model, Traffic("prompt", seed=seed), items=50, release=R1)
    tick = evaluate("drift_sensor", dagster_instance, tick.cursor, defs())
    assert [e.passed for e in tick.asset_events if getattr(e, "check_name", "") == "prompt_drift"] == [False, False]
    (run,) = tick.run_requests
    assert run.job_name == "release_chain" and run.partition_key.endswith("-drift")
    assert run.tags["rlhf/trigger"] == "drift_sensor" and "prompt" not in run.tags["rlhf/action"]
    assert tick.asset_events[0].metadata["artifact_id"].value == serve.rm[0]
    assert len(read_state(storage)[serve.rm[0]]["shifts"]) == 3 and read_state(storage)[serve.rm[0]]["pooled_z"] >= 0
    for seed in range(2):  # the drift goes on: the same episode, no second retrain
        write_log_directly(storage, model, Traffic("prompt", seed=10 + seed), items=50, release=R1)
    again = evaluate("drift_sensor", dagster_instance, tick.cursor, defs())
    assert again.asset_events and not again.run_requests
    idle = evaluate("drift_sensor", dagster_instance, again.cursor, defs())
    assert not idle.asset_events  # the cursor moved past every file
