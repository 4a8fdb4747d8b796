"""annotation_queue's incremental read of the earlier days (annotation/queue_index.py): the same queue as reading
every earlier day's pairs.parquet whole, while each day reads only the queue files that are new or rewritten (and
the days of the pairs it re-queues); a rematerialized old day and a queue added to an old day are picked up."""

import polars as pl
from polars.testing import assert_frame_equal

from rlhf_assets.annotation.queue import QUEUE_DIR, queue_path, queued_days, read_queue, write_queue
from rlhf_assets.annotation.queue_builder import build_queue
from rlhf_assets.annotation.queue_index import earlier_assignments, queued_texts
from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.preference.labels import AggregationSettings
from rlhf_assets_tests.annotation.queue_support import answers, pairs, qc_pool
from rlhf_assets_tests.counting_storage import CountingStorage

ANNOTATORS = [f"w{i}" for i in range(6)]
SETTINGS = AnnotationSettings(pairs_per_day=3, overlap_k=3, overlap_cap=5, qc_rate=0.2, target_confidence=0.7)
MAJORITY = AggregationSettings(method="majority")


def label(r) -> str:
    if r["expected_label"] is not None:
        return r["expected_label"]
    return "a" if r["item_id"] < "8" else ("a", "b", "tie")[int(r["annotator_id"][1:]) % 3]  # some split: re-queued


def queue_both_ways(storage, day: str, seed: int = 0) -> tuple[pl.DataFrame, list[str], list[str]]:
    """The day's queue from every earlier file read whole and from the index (asserted equal; written); the queue
    files the index refresh read, and those read for re-queued pairs' texts."""
    full = pl.concat([read_queue(storage, d, "pairs") for d in queued_days(storage) if d < day]
                     or [read_queue(storage, day, "pairs").head(0)])
    skipped = set(full["assignment_id"].head(1))
    given = answers(full.filter(~pl.col("assignment_id").is_in(list(skipped))), label) if full.height else \
        pl.DataFrame()
    settings = AnnotationSettings(**{**SETTINGS.__dict__, "seed": seed})
    kwargs = dict(new_pairs=pairs(3, tag=day), answers=given, annotators=ANNOTATORS, qc_pool=qc_pool(),
                  settings=settings, aggregation=MAJORITY, skipped=skipped)
    reference = build_queue(day, earlier=full, **kwargs)
    storage.reads.clear()
    earlier = earlier_assignments(storage, day)
    indexed = storage.reads_under(*QUEUE_DIR)
    storage.reads.clear()
    incremental = build_queue(day, earlier=earlier, texts=lambda ids: queued_texts(storage, earlier, ids), **kwargs)
    texts = storage.reads_under(*QUEUE_DIR)
    assert_frame_equal(incremental.assignments, reference.assignments)
    assert incremental.summary == reference.summary
    assert set(earlier["item_id"]) == set(full["item_id"])  # what new pairs must not repeat
    write_queue(storage, day, "pairs", incremental.assignments)
    return incremental.assignments, [_day(p) for p in indexed], [_day(p) for p in texts]


def _day(path: str) -> str:
    return path.rsplit("/", 2)[-2].removeprefix("date=")


def test_each_day_reads_only_the_new_queue_file_and_queues_as_the_full_read(tmp_path):
    storage = CountingStorage(str(tmp_path / "root"))
    days = ["2026-04-02", "2026-04-03", "2026-04-04", "2026-04-05"]
    requeued_any = False
    for i, day in enumerate(days):
        queue, indexed, texts = queue_both_ways(storage, day)
        assert indexed == days[i - 1:i]  # only yesterday's file is new to the index
        requeued = queue.filter(pl.col("round") > 0)
        requeued_any |= requeued.height > 0
        # texts come from the day each re-queued pair was first queued on, and from nowhere else
        first_days = {d for item in requeued["item_id"] for d in days[:i]
                      if item in set(read_queue(storage, d, "pairs")["item_id"])}
        assert set(texts) <= first_days and len(texts) == len(set(texts))
        storage.reads.clear()
    assert requeued_any  # dynamic overlap was exercised

    # between two days: an old day rematerialized (another seed: other annotators) and a queue added to a day
    # before all the others (written without a refresh of the index)
    write_queue(storage, days[1], "pairs", queue_both_ways(storage, days[1], seed=7)[0])
    write_queue(storage, "2026-04-01", "pairs", build_queue(
        "2026-04-01", new_pairs=pairs(2, tag="old"), earlier=read_queue(storage, "2026-04-01"),
        answers=pl.DataFrame(), annotators=ANNOTATORS, qc_pool=qc_pool(), settings=SETTINGS).assignments)
    _, indexed, _ = queue_both_ways(storage, "2026-04-06")
    assert sorted(indexed) == ["2026-04-01", days[1]]  # days[3] was indexed when days[1] was queued again
    _, indexed, _ = queue_both_ways(storage, "2026-04-07")
    assert indexed == ["2026-04-06"]


def test_a_deleted_queue_day_leaves_the_index(tmp_path):
    storage = CountingStorage(str(tmp_path / "root"))
    for day in ("2026-04-02", "2026-04-03"):
        queue_both_ways(storage, day)
    queue_path(storage, "2026-04-02", "pairs").unlink()
    queue_both_ways(storage, "2026-04-04")  # asserts it equals the full read, which no longer sees that day
    assert earlier_assignments(storage, "2026-04-04")["queued_on"].unique().to_list() == ["2026-04-03"]
