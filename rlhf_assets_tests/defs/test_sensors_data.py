"""The landing and annotator-disagreement sensors, evaluated with build_sensor_context against a real instance."""

import dataclasses
import json

import pytest

from rlhf_assets.automation.annotators import read_flagged
from rlhf_assets.definitions import defs
from rlhf_assets.defs.sensors.ticking import evaluate
from rlhf_assets.preference.sample_data import load_hh_pairs
from rlhf_assets.preference.simulator import default_panel, landing_files, simulate_comparisons
from rlhf_assets.storage import Storage
from rlhf_assets_tests.defs.dagster_support import DAY

pytestmark = pytest.mark.slow  # runs Dagster jobs

DAYS = ["2025-06-01", "2025-06-02", "2025-06-03"]


def _tick(name, instance, cursor=None):
    tick = evaluate(name, instance, cursor, defs())
    return tick.result, tick


def _land(storage, day, pairs, panel=None, seed=1, name=None):
    batch = simulate_comparisons(pairs, dates=[day], labels_per_pair=5, seed=seed, panel=panel)
    for d, (default_name, data) in landing_files(batch).items():
        storage.write_bytes(storage.landing_dir(d).joinpath(name or default_name), data)


def test_landing_sensor_requests_each_new_file_once_and_survives_a_restart(storage_root, dagster_instance):
    storage = Storage(str(storage_root))
    result, _ = _tick("landing_sensor", dagster_instance)
    assert not result.run_requests
    _land(storage, DAY, load_hh_pairs(limit=20))
    first, _ = _tick("landing_sensor", dagster_instance)
    (request,) = first.run_requests
    assert request.partition_key == DAY and request.run_key.startswith(f"landing:{DAY}:")
    assert request.tags["rlhf/trigger"] == "landing"
    again, _ = _tick("landing_sensor", dagster_instance, cursor=first.cursor)  # the cursor is all that survives
    assert not again.run_requests
    # a second file the same day → one more run, keyed by the new file only; the old one is not requested again
    _land(storage, DAY, load_hh_pairs(limit=40)[20:], seed=2, name="second.jsonl")
    more, _ = _tick("landing_sensor", dagster_instance, cursor=first.cursor)
    (second,) = more.run_requests
    assert second.run_key != request.run_key and second.tags["rlhf/files"] == "second.jsonl"
    # a file that leaves the landing zone (ingest quarantines unreadable ones) requests nothing
    storage.landing_dir(DAY).joinpath("second.jsonl").unlink()
    gone, _ = _tick("landing_sensor", dagster_instance, cursor=more.cursor)
    assert not gone.run_requests
    # the request runs the data pillar for that day
    run = defs().resolve_job_def("data_pillar").execute_in_process(
        partition_key=request.partition_key, instance=dagster_instance, tags=request.tags)
    assert run.success


def test_annotator_sensor_names_a_collapsed_annotator_and_the_next_aggregation_excludes_them(
        storage_root, dagster_instance):
    storage = Storage(str(storage_root))
    pairs = load_hh_pairs(limit=240)
    panel = default_panel(seed=0)
    good = max(panel, key=lambda a: a.accuracy)
    job = defs().resolve_job_def("data_pillar")
    cursor = None
    for i, day in enumerate(DAYS):
        day_panel = panel if day != DAYS[-1] else [
            dataclasses.replace(a, accuracy=0.5) if a.annotator_id == good.annotator_id else a for a in panel]
        _land(storage, day, pairs[i * 80:(i + 1) * 80], panel=day_panel, seed=i)
        run = job.execute_in_process(partition_key=day, instance=dagster_instance)
        (check,) = [c for c in run.get_asset_check_evaluations() if c.check_name == "annotators_stable"]
        result, _ = _tick("annotator_disagreement_sensor", dagster_instance, cursor)
        cursor = result.cursor
        (event,) = result.asset_events  # the sensor's review, an observation of the day
        assert event.partition == day and event.metadata["alarm"].value == (not check.passed)
        if day != DAYS[-1]:
            assert check.passed, check.description
    assert not check.passed and good.annotator_id in check.description  # the check in the run names them too
    collapsed = event.metadata["collapsed_annotators"].value
    # the collapsed annotator leads (the largest drop); a noisy one may follow: with ~35 labels a day the estimates
    # of the others move too when one good annotator turns random
    assert collapsed[0]["annotator_id"] == good.annotator_id and collapsed[0]["drop"] > 0.2
    assert good.annotator_id in read_flagged(storage)
    # no new day: nothing to review
    idle, _ = _tick("annotator_disagreement_sensor", dagster_instance, cursor)
    assert not idle.asset_events
    # the next aggregation of that day, excluding flagged annotators, leaves their labels out and says so
    rerun = job.execute_in_process(partition_key=DAYS[-1], instance=dagster_instance, run_config={
        "ops": {"aggregated_labels": {"config": {"flagged_annotators": "exclude"}}}})
    table = storage.read_parquet(storage.table_path("annotator_reliability", DAYS[-1]))
    row = table.filter(table["annotator_id"] == good.annotator_id).row(0, named=True)
    assert row["excluded"] and row["flagged"] and "accuracy" in row["flag_reason"] and row["n_labels"] > 0
    meta = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
            for e in rerun.get_asset_materialization_events()}
    assert good.annotator_id in meta["aggregated_labels"]["excluded_annotators"].value.split(", ")
    assert json.loads(json.dumps(event.metadata["collapsed_annotators"].value))  # JSON-safe evidence
