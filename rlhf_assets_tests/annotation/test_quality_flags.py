"""Annotator quality control: gold accuracy and attention failures, the flagging rule, the flagged list."""

import polars as pl
import pytest

from rlhf_assets.annotation.qc_pool import bundled_pool, read_pool
from rlhf_assets.annotation.quality import flag_reason, flags_from, review_quality
from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.automation.annotators import FLAGGED, add_flags, read_flagged
from rlhf_assets.storage import Storage

SETTINGS = AnnotationSettings(gold_accuracy_threshold=0.8, min_gold_answers=5, attention_failures_to_flag=2)


def qc_answers(annotator: str, gold_right: int, gold_wrong: int, attention_failed: int, attention_passed: int = 0):
    rows = []
    for kind, n, right in (("gold", gold_right, True), ("gold", gold_wrong, False),
                           ("attention", attention_failed, False), ("attention", attention_passed, True)):
        for i in range(n):
            expected = "a" if i % 2 else "b"  # the app shows either side: the expected label is as shown
            rows.append({"annotator_id": annotator, "item_kind": kind, "expected_label": expected,
                         "label": expected if right else ("b" if expected == "a" else "a")})
    return rows


def review(*rows):
    return review_quality(pl.DataFrame([r for rs in rows for r in rs]), SETTINGS).sort("annotator_id")


def test_a_bad_gold_annotator_is_flagged_with_the_reason():
    out = review(qc_answers("good", 9, 1, 0), qc_answers("bad", 3, 3, 0), qc_answers("new", 1, 3, 0))
    rows = {r["annotator_id"]: r for r in out.iter_rows(named=True)}
    assert rows["good"]["gold_accuracy"] == 0.9 and not rows["good"]["flagged"]
    assert rows["bad"]["flagged"] and rows["bad"]["gold_n"] == 6 and rows["bad"]["gold_accuracy"] == 0.5
    assert "gold accuracy 0.50 on 6 gold items, below 0.80" in rows["bad"]["flag_reason"]
    assert not rows["new"]["flagged"]  # 25% right, but only 4 gold answers: too few to judge


def test_one_attention_failure_does_not_flag_two_do():
    out = review(qc_answers("once", 5, 0, 1, 3), qc_answers("twice", 5, 0, 2, 2))
    rows = {r["annotator_id"]: r for r in out.iter_rows(named=True)}
    assert rows["once"]["attention_failures"] == 1 and not rows["once"]["flagged"]
    assert rows["twice"]["attention_failures"] == 2 and rows["twice"]["flagged"]
    assert rows["twice"]["flag_reason"] == "failed 2 attention checks (flagged at 2)"


def test_the_rule_at_its_edges():
    kw = dict(gold_accuracy_threshold=0.8, min_gold_answers=5, attention_failures_to_flag=2)
    assert flag_reason(5, 0.8, 0, **kw) is None             # at the threshold is not below it
    assert flag_reason(5, 0.79, 0, **kw) is not None
    assert flag_reason(4, 0.0, 1, **kw) is None
    assert flag_reason(0, None, 3, **kw).startswith("failed 3")


def test_flags_go_to_the_sensors_flagged_list_and_keep_the_first(tmp_path):
    storage = Storage(tmp_path / "root")
    add_flags(storage, {"drifter": {"reason": "estimated accuracy 0.4 …", "day": "2025-06-01"}})
    out = review(qc_answers("bad", 2, 5, 0), qc_answers("drifter", 0, 0, 3))
    flagged = add_flags(storage, flags_from(out, "2025-06-03", ("2025-05-20", "2025-06-02")))
    assert flagged == read_flagged(storage) and storage.path(*FLAGGED).exists()
    assert flagged["bad"]["source"] == "quality_control" and flagged["bad"]["reason"].startswith("quality control:")
    assert flagged["drifter"]["reason"] == "estimated accuracy 0.4 …"  # an earlier flag keeps its reason


def test_the_bundled_pool_is_clear_cut_and_a_user_pool_is_checked(tmp_path):
    pool = bundled_pool()
    assert set(pool["item_kind"]) == {"gold", "attention"} and pool["item_id"].n_unique() == pool.height
    for r in pool.filter(pl.col("item_kind") == "attention").iter_rows(named=True):
        right = r["response_a"] if r["expected_label"] == "a" else r["response_b"]
        assert right.startswith("This is an attention check")
    assert set(pool["expected_label"]) == {"a", "b"}  # the right answer is not always on one side
    good = tmp_path / "pool.jsonl"
    good.write_text('{"kind": "gold", "prompt": "2+2?", "response_a": "4", "response_b": "5", "expected_label": "a"}\n')
    assert read_pool(good)["item_kind"].to_list() == ["gold"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "gold", "prompt": "2+2?", "response_a": "4", "response_b": "5", "expected_label": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected_label 'x'"):
        read_pool(bad)
