"""Release wiring that must say what happened: production_release moves global aliases, so a run over several
release partitions (a range or a backfill) fails before anything moves, and rollback mode restores what the
history says; preference_dataset reads aggregated_labels through its declared input and records, on the instance,
exactly the days (and the materializations of them) its pinned snapshot holds — never a day after the cutoff."""

import hashlib
import time

import dagster as dg
import polars as pl
import pytest
from dagster._core.execution.backfill import PartitionBackfill

from rlhf_assets.definitions import defs
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.references import DecisionRef, read_reference, write_reference
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.deployment import apply_decision
from rlhf_assets.registry.releases import create_release
from rlhf_assets.storage import Storage

R1, R2, R3 = "r20250601-2359", "r20250602-2359", "r20250603-2359"
ONE_RELEASE = "a run may target only one release"


def failure_messages(result):
    return [e.step_failure_data.user_failure_data.description for e in result.all_events
            if e.is_step_failure and e.step_failure_data.user_failure_data is not None]


# production_release: one release per run ---------------------------------------------------------------------


@pytest.fixture
def decided(storage_root, dagster_instance):
    """Three releases with promote / promote / canary decisions, as deployment_decision stores them."""
    storage = Storage(storage_root)
    for n, (key, verdict) in enumerate(((R1, "promote"), (R2, "promote"), (R3, "canary")), start=1):
        create_release(storage, key=key)
        write_reference(storage, "deployment_decision", key, DecisionRef(
            release=key, verdict=verdict, canary_share=0.2, artifacts={"policy": f"{n:064x}"}))
    dagster_instance.add_dynamic_partitions("release", [R1, R2, R3])
    return storage


def apply_job():
    return defs().resolve_job_def("apply_release_decision")


def test_a_partition_range_run_fails_before_moving_anything(decided, dagster_instance):
    assert apply_job().execute_in_process(partition_key=R1, instance=dagster_instance).success
    before = Registry(decided).history()
    result = apply_job().execute_in_process(
        instance=dagster_instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": R1, "dagster/asset_partition_range_end": R3})
    assert not result.success
    (message,) = failure_messages(result)
    assert ONE_RELEASE in message and f"targets 3 ({R1}, {R2}, {R3})" in message and "Nothing was moved" in message
    assert Registry(decided).history() == before


def _backfill(instance, keys, backfill_id):
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=defs().resolve_asset_graph(), partition_names=keys,
        asset_selection=[dg.AssetKey("production_release")], backfill_timestamp=time.time(), tags={},
        dynamic_partitions_store=instance, all_partitions=False, title=None, description=None, run_config=None)
    instance.add_backfill(backfill)
    return {"dagster/backfill": backfill_id}


def test_a_backfill_over_several_releases_fails_each_of_its_runs(decided, dagster_instance):
    """A backfill launches one single-partition run per release (this is what the daemon does): each must refuse,
    or production would walk through every release and the last to run would win."""
    tags = _backfill(dagster_instance, [R1, R2], "several")
    for key in (R1, R2):
        result = apply_job().execute_in_process(partition_key=key, instance=dagster_instance, tags=tags,
                                                raise_on_error=False)
        assert not result.success
        (message,) = failure_messages(result)
        assert ONE_RELEASE in message and "targets 2" in message
    assert Registry(decided).history() == []
    # a backfill of a single release is just a run of it
    one = apply_job().execute_in_process(partition_key=R2, instance=dagster_instance,
                                         tags=_backfill(dagster_instance, [R2], "single"))
    assert one.success and Registry(decided).current("production")["release"] == R2


def test_rollback_mode_restores_the_history_and_refuses_a_canary_only_release(decided, dagster_instance):
    """r1 goes live by an override of another decision, r2 by its own; rollback mode on r1 restores the override's
    artifacts (re-applying r1's stored promote decision would put other ones live); r3 (canary only) fails."""
    override = {"verdict": "reject", "artifacts": {"policy": "f" * 64}}
    apply_decision(decided, R1, override, override_reason="hotfix", approver="ana")
    apply_decision(decided, R2, read_reference(decided, "deployment_decision", R2).as_decision())
    rollback = {"ops": {"production_release": {"config": {"mode": "rollback"}}}}
    before = Registry(decided).history()
    canary = apply_job().execute_in_process(partition_key=R3, instance=dagster_instance, run_config=rollback,
                                            raise_on_error=False)
    assert not canary.success and f"releases that did: {R1}, {R2}" in failure_messages(canary)[0]
    assert Registry(decided).history() == before
    back = apply_job().execute_in_process(partition_key=R1, instance=dagster_instance, run_config=rollback)
    out = back.output_for_node("production_release")
    assert out.action == "rollback" and out.artifacts == override["artifacts"] and out.mode == "rollback"
    assert Registry(decided).current("production")["artifacts"] == override["artifacts"]


# preference_dataset: the recorded lineage is what the snapshot holds ------------------------------------------

D1, D2, D3 = "2025-06-01", "2025-06-02", "2025-06-03"
RELEASE = R2  # cutoff D2 (the key's date)


def land(storage, instance, day, n, start, seed, batch_id=None):
    pairs = [{"prompt": f"Human: question {k}?\n\nAssistant:", "chosen": f"a helpful answer {k % 7}",
              "rejected": f"go away {k % 5}"} for k in range(start, start + n)]
    batch = simulate_comparisons(pairs, dates=[day], labels_per_pair=3, seed=seed, batch_id=batch_id)
    for d, (name, data) in landing_files(batch).items():
        storage.write_bytes(storage.landing_dir(d).joinpath(name), data)
    assert defs().resolve_job_def("data_pillar").execute_in_process(partition_key=day, instance=instance).success


def labels_records(instance, day):
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("aggregated_labels"), asset_partitions=[day]), limit=10).records


def dataset_record(instance):
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("preference_dataset"), asset_partitions=[RELEASE]),
        limit=1).records
    return record


def materialize_dataset(instance):
    result = defs().resolve_job_def("reward_pillar").execute_in_process(
        partition_key=RELEASE, instance=instance, asset_selection=[dg.AssetKey("preference_dataset")],
        raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]


def test_preference_dataset_records_exactly_the_days_it_read(storage_root, dagster_instance):
    storage = Storage(storage_root)
    for n, day in enumerate((D1, D2, D3)):  # D3 (after the cutoff) is materialized last: the newest upstream event
        land(storage, dagster_instance, day, 30, start=100 * n, seed=n)
    create_release(storage, key=RELEASE)
    dagster_instance.add_dynamic_partitions("release", [RELEASE])
    # a day after the cutoff must not even be read: corrupt its stored table so any read of it fails its check
    after = storage.table_path("aggregated_labels", D3)
    after.write_bytes(after.read_bytes() + b"not parquet")
    materialize_dataset(dagster_instance)  # the input spans every daily key since the partitions' start; 3 stored

    record = dataset_record(dagster_instance)
    mat = record.asset_materialization
    table = storage.read_parquet(storage.table_path("preference_dataset", RELEASE))
    lineage = [r.data for r in mat.metadata["upstream_partitions"].value.records]  # shown as a table
    assert [d["partition"] for d in lineage] == sorted(table["day"].unique().to_list()) == [D1, D2]
    written = {day: labels_records(dagster_instance, day)[0] for day in (D1, D2, D3)}
    for d in lineage:  # each day points at the aggregated_labels materialization that wrote exactly these bytes
        upstream = written[d["partition"]]
        assert d["storage_id"] == upstream.storage_id and d["run_id"] == upstream.run_id
        assert upstream.asset_materialization.metadata["content_sha256"].value == d["sha256"]
    tags = mat.tags
    assert written[D3].storage_id > written[D2].storage_id  # Dagster alone would have recorded D3's event
    assert tags["dagster/input_event_pointer/aggregated_labels"] == str(written[D2].storage_id)
    versions = "".join(written[d].asset_materialization.tags["dagster/data_version"] for d in (D1, D2))
    assert tags["dagster/input_data_version/aggregated_labels"] == hashlib.sha256(versions.encode()).hexdigest()
    assert tags["dagster/data_version"] == mat.metadata["dataset_id"].value

    # late annotations for D1: the release keeps its pinned snapshot, and its lineage keeps pointing at the
    # materialization it read, not at the newer one
    land(storage, dagster_instance, D1, 10, start=1000, seed=9, batch_id="late")
    newer = labels_records(dagster_instance, D1)[0]
    assert newer.storage_id != written[D1].storage_id
    assert newer.asset_materialization.metadata["content_sha256"].value != lineage[0]["sha256"]
    materialize_dataset(dagster_instance)
    again = dataset_record(dagster_instance).asset_materialization
    assert again.metadata["reused_pinned_snapshot"].value is True
    assert [r.data for r in again.metadata["upstream_partitions"].value.records] == lineage
    assert again.tags["dagster/input_event_pointer/aggregated_labels"] == str(written[D2].storage_id)
    assert again.tags["dagster/data_version"] == tags["dagster/data_version"]
    assert pl.read_parquet(storage.table_path("preference_dataset", RELEASE)).equals(table)
