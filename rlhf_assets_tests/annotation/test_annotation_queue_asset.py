"""annotation_queue in real Dagster runs: day 1 from the sample data (no release yet), answers landed and run
through the data pillar, day 2 re-queues the split pair and flags the annotator who failed the attention checks."""

import json

import dagster as dg
import polars as pl
import pytest

from rlhf_assets.annotation.pair_sources import SAMPLE_SOURCE
from rlhf_assets.annotation.queue import read_queue
from rlhf_assets.automation.annotators import read_flagged
from rlhf_assets.definitions import defs
from rlhf_assets.storage import Storage

DAY1, DAY2 = "2025-06-01", "2025-06-02"
ANNOTATORS = ["w0", "w1", "w2", "w3"]
CONFIG = {"annotators": ANNOTATORS, "pairs_per_day": 6, "overlap_k": 3, "qc_rate": 0.5, "attention_share": 1.0}


def run_queue(instance, day):
    d = defs()
    job = d.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("annotation_queue")})
    return job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False,
                                  run_config={"ops": {"annotation_queue": {"config": CONFIG}}})


def metadata(result):
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def land_answers(storage, queue, split_item):
    """Everyone answers as the sample's order says ("a"), but w3 fails every attention check and the annotators of
    ``split_item`` split a / b / tie."""
    split = iter(["a", "b", "tie"])
    lines = []
    for n, r in enumerate(queue.sort("assignment_id").iter_rows(named=True)):
        label = "a"
        if r["item_kind"] == "attention":
            label = r["expected_label"] if r["annotator_id"] != "w3" else ("b" if r["expected_label"] == "a" else "a")
        elif r["item_kind"] == "gold":
            label = r["expected_label"]
        elif r["item_id"] == split_item:
            label = next(split)
        lines.append(json.dumps({
            "comparison_id": r["assignment_id"], "prompt": r["prompt"], "response_a": r["response_a"],
            "response_b": r["response_b"], "label": label, "annotator_id": r["annotator_id"],
            "created_at": f"{DAY1}T10:{n % 60:02d}:00Z", "batch_id": r["batch_id"], "item_kind": r["item_kind"],
            "expected_label": r["expected_label"], "orientation": "as_queued", "annotation_ms": 4000}))
    storage.write_bytes(storage.landing_dir(DAY1).joinpath("app-0001.jsonl"), ("\n".join(lines) + "\n").encode())


@pytest.mark.slow
def test_queue_then_answers_then_dynamic_overlap_and_flags(storage_root, dagster_instance):
    storage = Storage(storage_root)
    first = run_queue(dagster_instance, DAY1)
    assert first.success
    meta = metadata(first)
    assert meta["pairs_from"] == SAMPLE_SOURCE and "no production release" in meta["source_note"]
    queue = read_queue(storage, DAY1, "pairs")
    pairs = queue.filter(pl.col("item_kind") == "pair")
    assert pairs["item_id"].n_unique() == 6 and pairs.height == 18 and queue.height == meta["assignments"]
    assert queue.filter(pl.col("item_kind") == "attention").height > 0
    assert queue.select("item_id", "annotator_id").is_duplicated().sum() == 0

    split_item = sorted(pairs["item_id"].unique())[0]
    land_answers(storage, queue, split_item)
    pillar = defs().resolve_job_def("data_pillar").execute_in_process(partition_key=DAY1, instance=dagster_instance)
    assert pillar.success
    labels = storage.read_parquet(storage.table_path("aggregated_labels", DAY1))
    assert set(labels["pair_id"]) == set(pairs["item_id"])  # no gold / attention item became a label
    table = storage.read_parquet(storage.table_path("annotator_reliability", DAY1))
    w3 = table.filter(pl.col("annotator_id") == "w3").row(0, named=True)
    assert w3["attention_failures"] >= 2

    second = run_queue(dagster_instance, DAY2)
    assert second.success
    meta2 = metadata(second)
    assert meta2["requeued_by_dynamic_overlap"] == 1
    queue2 = read_queue(storage, DAY2, "pairs")
    extra = queue2.filter(pl.col("round") == 1)
    assert extra["item_id"].to_list() == [split_item]
    assert extra["annotator_id"][0] not in set(pairs.filter(pl.col("item_id") == split_item)["annotator_id"])
    flagged = read_flagged(storage)
    assert set(flagged) == {"w3"} and "attention checks" in flagged["w3"]["reason"]
    assert flagged["w3"]["source"] == "quality_control"
    assert not set(queue2.filter(pl.col("item_kind") == "pair", pl.col("round") == 0)["item_id"]) & set(
        pairs["item_id"])  # new pairs are new
