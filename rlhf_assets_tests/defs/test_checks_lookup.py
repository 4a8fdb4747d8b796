"""The release gate's view of blocking checks fails closed and is tied to exactly one partition.

Small stand-in assets carry the real check names and partition definitions, so these tests exercise the real
instance storage (SQLite) and the real lookup; the data-pillar test at the end checks what the project's own
assets record.
"""

import dagster as dg
import pytest

from rlhf_assets.defs.check_names import (
    CALIBRATED_ECE,
    KL_WITHIN_BUDGET,
    NO_NAN_SCORES,
    QUARANTINE_RATE,
    RELEASE_BLOCKING_CHECKS,
    ROWS_CONSERVED,
    TEST_ACCURACY,
)
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses, check_status
from rlhf_assets.evaluation.gates import decide
from rlhf_assets_tests.support import GOOD


def _calibration_asset(outcomes: dict[str, bool], explode: set[str] = frozenset()):
    """A stand-in rm_calibration with the real check specs: passes per partition unless ``outcomes`` says no."""
    names = (TEST_ACCURACY, CALIBRATED_ECE, NO_NAN_SCORES)

    @dg.asset(name="rm_calibration", partitions_def=release_partitions, check_specs=[
        dg.AssetCheckSpec(n, asset="rm_calibration", blocking=True, partitions_def=release_partitions) for n in names])
    def rm_calibration(context):
        if context.partition_key in explode:
            raise RuntimeError("boom before any check was evaluated")
        yield dg.Output(1)
        for n in names:
            yield dg.AssetCheckResult(check_name=n, passed=outcomes.get(context.partition_key, True),
                                      metadata={"value": 0.5})

    return rm_calibration


def _run(instance, asset, partition):
    return dg.materialize([asset], instance=instance, partition_key=partition, raise_on_error=False)


def _statuses(instance, partition):
    return {s.name: s.status for s in blocking_check_statuses(instance, partition)}


def test_a_fresh_instance_has_nothing_measured_and_the_gate_rejects(dagster_instance):
    statuses = blocking_check_statuses(dagster_instance, "r1")
    assert [s.name for s in statuses] == [f"{a}:{c}" for a, c in RELEASE_BLOCKING_CHECKS]
    assert {s.status for s in statuses} == {"not measured"}
    assert all("never evaluated" in s.detail for s in statuses)
    checks = [{"check": s.name, "status": s.status, "detail": s.detail} for s in statuses]
    d = decide(GOOD.__class__(**{**GOOD.__dict__, "upstream_checks": checks}))
    assert d.verdict == "reject" and "upstream_checks" in d.reasons[-1]


@pytest.mark.slow
def test_a_failure_stays_visible_behind_many_evaluations_of_other_partitions(dagster_instance):
    others = [f"r{i:03d}" for i in range(62)]
    dagster_instance.add_dynamic_partitions("release", ["target", *others])
    asset = _calibration_asset({"target": False})
    _run(dagster_instance, asset, "target")
    for p in others:  # 62 runs × 3 checks after the target's failing one
        _run(dagster_instance, asset, p)
    statuses = _statuses(dagster_instance, "target")
    assert statuses[f"rm_calibration:{TEST_ACCURACY}"] == "failed"
    assert statuses[f"rm_calibration:{CALIBRATED_ECE}"] == "failed"
    # the PPO check never ran for any partition: not measured, never "not failed"
    assert statuses[f"ppo_policy:{KL_WITHIN_BUDGET}"] == "not measured"
    assert _statuses(dagster_instance, "r000")[f"rm_calibration:{TEST_ACCURACY}"] == "passed"


@pytest.mark.slow
def test_evaluations_are_stored_against_their_partition(dagster_instance):
    dagster_instance.add_dynamic_partitions("release", ["a", "b"])
    asset = _calibration_asset({"b": False})
    _run(dagster_instance, asset, "a")
    _run(dagster_instance, asset, "b")
    key = dg.AssetCheckKey(dg.AssetKey("rm_calibration"), TEST_ACCURACY)
    history = dagster_instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    assert [(r.partition, r.status.value) for r in history] == [("b", "FAILED"), ("a", "SUCCEEDED")]
    # the evaluation event itself carries the partition (not only the planned row)
    assert [r.event.dagster_event.event_specific_data.partition for r in history] == ["b", "a"]


@pytest.mark.slow
def test_planned_but_never_executed_is_not_measured(dagster_instance):
    dagster_instance.add_dynamic_partitions("release", ["r1"])
    _run(dagster_instance, _calibration_asset({}), "r1")
    assert _statuses(dagster_instance, "r1")[f"rm_calibration:{TEST_ACCURACY}"] == "passed"
    result = _run(dagster_instance, _calibration_asset({}, explode={"r1"}), "r1")  # a rerun that errors
    assert not result.success
    status = check_status(dagster_instance, "rm_calibration", TEST_ACCURACY, "r1")
    assert status.status == "not measured" and "planned in run" in status.detail


@pytest.mark.slow
def test_an_evaluation_of_an_older_materialization_is_not_measured(dagster_instance):
    dagster_instance.add_dynamic_partitions("release", ["r1"])
    _run(dagster_instance, _calibration_asset({}), "r1")
    # the asset is materialized again without its checks (e.g. reported from outside): the old verdict is stale
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("rm_calibration", partition="r1"))
    status = check_status(dagster_instance, "rm_calibration", TEST_ACCURACY, "r1")
    assert status.status == "not measured" and "older materialization" in status.detail


@pytest.mark.slow
@pytest.mark.parametrize("name", [QUARANTINE_RATE, ROWS_CONSERVED])
def test_the_data_pillar_stores_its_blocking_checks_per_day(storage_root, dagster_instance, name):
    from rlhf_assets_tests.defs.dagster_support import DAY, lay, run_day

    lay(storage_root, n_pairs=20)
    assert run_day(dagster_instance).success
    record = check_status(dagster_instance, "validated_pairs", name, DAY)
    assert record.status == "passed", record.detail
    key = dg.AssetCheckKey(dg.AssetKey("validated_pairs"), name)
    (latest,) = dagster_instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    assert latest.partition == DAY and latest.event.dagster_event.event_specific_data.partition == DAY
    assert check_status(dagster_instance, "validated_pairs", name, "2025-06-02").status == "not measured"
