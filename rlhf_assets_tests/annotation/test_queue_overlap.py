"""The work queue: k distinct annotators per pair, load balance, dynamic overlap and its cap, QC mixed in."""

import dataclasses

import polars as pl
import pytest

from rlhf_assets.annotation.queue import read_queue, write_queue
from rlhf_assets.annotation.queue_builder import build_queue
from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.preference.labels import AggregationSettings
from rlhf_assets.storage import Storage
from rlhf_assets_tests.annotation.queue_support import answers, empty_queue, pairs, qc_pool

ANNOTATORS = [f"w{i}" for i in range(6)]
MAJORITY = AggregationSettings(method="majority")  # confidence = vote share: easy to steer in a test


def _no_annotator_twice(frame: pl.DataFrame) -> None:
    assert frame.select("item_id", "annotator_id").is_duplicated().sum() == 0


def test_new_pairs_go_to_k_distinct_annotators_load_balanced():
    s = AnnotationSettings(pairs_per_day=10, overlap_k=3, qc_rate=0.0)
    q = build_queue("2025-06-01", new_pairs=pairs(12), earlier=empty_queue(), answers=pl.DataFrame(),
                    annotators=ANNOTATORS, qc_pool=qc_pool(), settings=s).assignments
    assert q["item_id"].n_unique() == 10  # pairs_per_day
    assert (q.group_by("item_id").agg(pl.col("annotator_id").n_unique())["annotator_id"] == 3).all()
    _no_annotator_twice(q)
    loads = q.group_by("annotator_id").len()["len"]
    assert loads.max() - loads.min() <= 1 and loads.sum() == 30
    assert set(q["round"]) == {0} and set(q["item_kind"]) == {"pair"}


def test_unsure_item_gets_one_more_annotator_sure_one_does_not_and_the_cap_holds(tmp_path):
    s = AnnotationSettings(pairs_per_day=2, overlap_k=3, overlap_cap=4, target_confidence=0.7, qc_rate=0.0)
    day1 = build_queue("2025-06-01", new_pairs=pairs(2), earlier=empty_queue(), answers=pl.DataFrame(),
                       annotators=ANNOTATORS, qc_pool=qc_pool(), settings=s).assignments
    unsure, sure = sorted(day1["item_id"].unique())
    seen = {unsure: 0}

    def split_on_unsure(r):  # the unsure pair gets a, b, tie...; the sure one always "a"
        if r["item_id"] == sure:
            return "a"
        seen[r["item_id"]] += 1
        return ("a", "b", "tie", "b")[seen[r["item_id"]] - 1]

    answered1 = answers(day1, split_on_unsure)
    day2 = build_queue("2025-06-02", new_pairs=pairs(0), earlier=day1, answers=answered1, annotators=ANNOTATORS,
                       qc_pool=qc_pool(), settings=s, aggregation=MAJORITY)
    q2 = day2.assignments
    assert q2["item_id"].to_list() == [unsure]  # one more annotator for the unsure pair only
    assert q2["round"].to_list() == [1]
    assert q2["annotator_id"][0] not in set(day1.filter(pl.col("item_id") == unsure)["annotator_id"])
    assert [r["item_id"] for r in day2.summary["requeued"]] == [unsure]

    # the 4th answer still leaves it split (a, b, tie, b: 0.5 < 0.7), but overlap_cap=4 annotators were asked
    earlier, answered2 = pl.concat([day1, q2]), pl.concat([answered1, answers(q2, split_on_unsure)])
    day3 = build_queue("2025-06-03", new_pairs=pairs(0), earlier=earlier, answers=answered2, annotators=ANNOTATORS,
                       qc_pool=qc_pool(), settings=s, aggregation=MAJORITY)
    assert day3.assignments.height == 0
    # with a higher cap it would have gone on, to an annotator who has not seen it
    day3b = build_queue("2025-06-03", new_pairs=pairs(0), earlier=earlier, answers=answered2, annotators=ANNOTATORS,
                        qc_pool=qc_pool(), settings=dataclasses.replace(s, overlap_cap=5),
                        aggregation=MAJORITY).assignments
    assert day3b["item_id"].to_list() == [unsure] and day3b["round"].to_list() == [2]
    _no_annotator_twice(pl.concat([earlier, day3b]))


def test_an_item_waits_for_the_answers_it_was_asked_for():
    s = AnnotationSettings(pairs_per_day=1, overlap_k=3, qc_rate=0.0)
    day1 = build_queue("2025-06-01", new_pairs=pairs(1), earlier=empty_queue(), answers=pl.DataFrame(),
                       annotators=ANNOTATORS, qc_pool=qc_pool(), settings=s).assignments
    two_answers = answers(day1.head(2), lambda r: "a" if r["annotator_id"] == day1["annotator_id"][0] else "b")
    q = build_queue("2025-06-02", new_pairs=pairs(0), earlier=day1, answers=two_answers, annotators=ANNOTATORS,
                    qc_pool=qc_pool(), settings=s, aggregation=MAJORITY).assignments
    assert q.height == 0  # split 1:1 but one of the 3 asked has not answered: not re-queued yet


def test_no_annotator_twice_even_when_too_few_are_left():
    s = AnnotationSettings(pairs_per_day=1, overlap_k=3, overlap_cap=6, qc_rate=0.0)
    three = ANNOTATORS[:3]
    day1 = build_queue("2025-06-01", new_pairs=pairs(1), earlier=empty_queue(), answers=pl.DataFrame(),
                       annotators=three, qc_pool=qc_pool(), settings=s).assignments
    labels = iter(["a", "b", "tie"])
    day2 = build_queue("2025-06-02", new_pairs=pairs(0), earlier=day1, answers=answers(day1, lambda r: next(labels)),
                       annotators=three, qc_pool=qc_pool(), settings=s, aggregation=MAJORITY)
    assert day2.assignments.height == 0  # unsure, but all three annotators have judged it
    assert day2.summary["short"] == [{"item_id": day1["item_id"][0], "round": 1, "missing": 1}]
    with pytest.raises(ValueError, match="no annotators"):
        build_queue("2025-06-02", new_pairs=pairs(1), earlier=empty_queue(), answers=pl.DataFrame(), annotators=[],
                    qc_pool=qc_pool(), settings=s)


def test_qc_items_are_mixed_in_at_the_rate_and_never_repeat_for_an_annotator(tmp_path):
    s = AnnotationSettings(pairs_per_day=40, overlap_k=3, qc_rate=0.2, attention_share=0.5)
    pool = qc_pool(n_gold=30, n_attention=30)
    build = build_queue("2025-06-01", new_pairs=pairs(40), earlier=empty_queue(), answers=pl.DataFrame(),
                        annotators=ANNOTATORS, qc_pool=pool, settings=s)
    q = build.assignments
    qc = q.filter(pl.col("item_kind") != "pair")
    assert set(qc["item_kind"]) == {"gold", "attention"} and qc["expected_label"].is_not_null().all()
    assert 0.12 < qc.height / q.height < 0.28  # about qc_rate of all assignments
    _no_annotator_twice(q)
    # mixed in, not appended: some QC row comes before the last pair row
    kinds = q["item_kind"].to_list()
    assert kinds.index("gold") < len(kinds) - 1 - kinds[::-1].index("pair")
    assert build.summary["by_kind"]["pair"] == 120
    # it round-trips through the queue table (write_queue validates it)
    storage = Storage(tmp_path / "root")
    write_queue(storage, "2025-06-01", "pairs", q)
    assert read_queue(storage, "2025-06-01", "pairs").height == q.height
    # the next day nobody gets a QC item they were given before
    q2 = build_queue("2025-06-02", new_pairs=pairs(40, "next"), earlier=q, answers=pl.DataFrame(),
                     annotators=ANNOTATORS, qc_pool=pool, settings=s).assignments
    _no_annotator_twice(pl.concat([q, q2]))


def test_a_skip_counts_as_a_response_and_its_missing_answer_is_asked_again():
    s = AnnotationSettings(pairs_per_day=1, overlap_k=3, qc_rate=0.0)
    day1 = build_queue("2025-06-01", new_pairs=pairs(1), earlier=empty_queue(), answers=pl.DataFrame(),
                       annotators=ANNOTATORS, qc_pool=qc_pool(), settings=s).assignments
    two = answers(day1.head(2), lambda r: "a")  # unanimous, but the third annotator skipped it
    kwargs = dict(new_pairs=pairs(0), earlier=day1, answers=two, annotators=ANNOTATORS, qc_pool=qc_pool(),
                  settings=s, aggregation=MAJORITY)
    assert build_queue("2025-06-02", **kwargs).assignments.height == 0  # not skipped: still waiting for it
    q = build_queue("2025-06-02", skipped={day1["assignment_id"][2]}, **kwargs)
    assert q.assignments["item_id"].to_list() == [day1["item_id"][0]] and q.summary["requeued"][0]["skipped"] == 1
    assert q.assignments["annotator_id"][0] not in set(day1["annotator_id"])
