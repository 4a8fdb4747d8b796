"""The seeded annotator-panel simulator and the landing-file writer."""

from __future__ import annotations

import gzip
import io
from collections import Counter
from datetime import UTC, datetime

import polars as pl
import pytest

from rlhf_assets.preference.sample_data import load_hh_pairs
from rlhf_assets.preference.schema import FIELD_NAMES, LABELS, is_canonical_order, pair_id
from rlhf_assets.preference.simulator import (
    BAD_KINDS,
    KINDS,
    POLICY_CHOSEN,
    POLICY_REJECTED,
    AnnotatorProfile,
    agreement_by_annotator,
    default_panel,
    simulate_comparisons,
    write_landing,
)

DATES = ["2024-05-01", "2024-05-02", "2024-05-03"]


@pytest.fixture(scope="module")
def hh_pairs() -> list[dict]:
    return load_hh_pairs()


@pytest.fixture(scope="module")
def big_batch(hh_pairs):
    return simulate_comparisons(hh_pairs[:2000], dates=DATES, labels_per_pair=5, seed=7)


def _day(ts: str) -> str:
    assert ts.endswith("Z")
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).date().isoformat()


def test_default_panel_mix():
    for seed in range(5):
        panel = default_panel(12, seed=seed)
        assert len(panel) == 12
        assert len({a.annotator_id for a in panel}) == 12
        kinds = Counter(a.kind for a in panel)
        assert set(kinds) <= set(KINDS)
        assert kinds == {"good": 7, "noisy": 2, "spammer": 1, "position_biased": 1, "tie_happy": 1}
        for a in panel:
            if a.kind == "good":
                assert 0.85 <= a.accuracy <= 0.95
            elif a.kind == "noisy":
                assert 0.6 <= a.accuracy <= 0.7
            elif a.kind == "spammer":
                assert a.accuracy == 0.5 and a.p_tie == pytest.approx(1 / 3)
            elif a.kind == "position_biased":
                assert a.p_first == pytest.approx(0.85, abs=0.031)
            else:
                assert a.p_tie == pytest.approx(0.4, abs=0.05)
    for n in range(6, 40):
        kinds = Counter(a.kind for a in default_panel(n))
        assert kinds["position_biased"] == 1 and 1 <= kinds["spammer"] <= 2 and 1 <= kinds["tie_happy"] <= 2
        assert kinds["noisy"] >= 1 and (n < 9 or kinds["good"] > n / 2)
    with pytest.raises(ValueError):
        default_panel(5)
    assert default_panel(12, seed=1) == default_panel(12, seed=1)
    assert default_panel(12, seed=1) != default_panel(12, seed=2)
    with pytest.raises(ValueError):
        AnnotatorProfile("x", "lazy", 0.9, 0.1)


def test_same_seed_identical_different_seed_different(hh_pairs, tmp_path):
    pairs = hh_pairs[:150]
    a = simulate_comparisons(pairs, dates=DATES, seed=3, bad_row_rate=0.05)
    b = simulate_comparisons(pairs, dates=DATES, seed=3, bad_row_rate=0.05)
    c = simulate_comparisons(pairs, dates=DATES, seed=4, bad_row_rate=0.05)
    assert a.records == b.records and a.truth == b.truth and a.bad_kinds == b.bad_kinds
    assert a.records != c.records
    assert [r["label"] for r in a.records] != [r["label"] for r in c.records]
    assert a.truth == c.truth  # truth depends only on the pairs
    for fmt in ("jsonl", "jsonl.gz", "parquet"):
        pa = write_landing(a, tmp_path / f"a-{fmt}", fmt=fmt)
        pb = write_landing(b, tmp_path / f"b-{fmt}", fmt=fmt)
        assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb], fmt


def test_records_structure(hh_pairs):
    pairs = hh_pairs[:300]
    batch = simulate_comparisons(pairs, dates=DATES, labels_per_pair=5, seed=11)
    assert batch.n_bad == 0 and all(k is None for k in batch.bad_kinds)
    assert len(batch.records) == 300 * 5 == len(batch.record_dates)
    assert len({r["comparison_id"] for r in batch.records}) == len(batch.records)
    panel_ids = {a.annotator_id for a in batch.annotators}
    by_pair: dict[str, list[dict]] = {}
    for rec, day in zip(batch.records, batch.record_dates):
        assert list(rec) == [f for f in FIELD_NAMES if f in rec]
        assert rec["label"] in LABELS
        assert rec["annotator_id"] in panel_ids
        assert rec["response_a"] != rec["response_b"]
        assert _day(rec["created_at"]) == day
        assert isinstance(rec["annotation_ms"], int) and rec["annotation_ms"] > 0
        assert 1 <= rec["confidence"] <= 5
        assert rec["batch_id"] == batch.batch_id
        by_pair.setdefault(pair_id(rec["prompt"], rec["response_a"], rec["response_b"]), []).append(rec | {"day": day})
    assert len(by_pair) == 300 and set(batch.truth) == set(by_pair)
    for i, p in enumerate(pairs):
        pid = pair_id(p["prompt"], p["chosen"], p["rejected"])
        recs = by_pair[pid]
        assert len(recs) == 5 and len({r["annotator_id"] for r in recs}) == 5
        assert len({r["day"] for r in recs}) == 1
        assert recs[0]["day"] == DATES[i * 3 // 300]  # contiguous, even blocks
        assert batch.truth[pid] == ("a" if is_canonical_order(p["chosen"], p["rejected"]) else "b")
        for r in recs:
            chosen_first = r["response_a"] == p["chosen"]
            assert (r["policy_a"], r["policy_b"]) == (
                (POLICY_CHOSEN, POLICY_REJECTED) if chosen_first else (POLICY_REJECTED, POLICY_CHOSEN)
            )
    assert Counter(batch.record_dates) == {d: 500 for d in DATES}
    # both shown orders occur
    assert 0.4 < sum(r["policy_a"] == POLICY_CHOSEN for r in batch.records) / len(batch.records) < 0.6


def test_empirical_behaviour_matches_profiles(big_batch):
    stats = agreement_by_annotator(big_batch)
    assert len(big_batch.records) == 10_000
    for a in big_batch.annotators:
        s = stats[a.annotator_id]
        assert s["n"] > 300, a
        if a.kind == "good":
            assert s["accuracy"] > 0.8, a
            assert s["tie_rate"] < 0.1, a
        elif a.kind == "noisy":
            assert 0.5 < s["accuracy"] < 0.8, a
        elif a.kind == "spammer":
            assert 0.25 < s["tie_rate"] < 0.42 and 0.4 < s["accuracy"] < 0.6, a
        elif a.kind == "position_biased":
            labels = [r["label"] for r in big_batch.records if r["annotator_id"] == a.annotator_id]
            assert labels.count("a") / len(labels) > 0.75, a
            assert 0.4 < s["accuracy"] < 0.6, a
        elif a.kind == "tie_happy":
            assert s["tie_rate"] > 0.3, a
            assert s["accuracy"] > 0.7, a
    # annotation time: lognormal-ish, spammers are the fastest
    ms = {a.annotator_id: [] for a in big_batch.annotators}
    for r in big_batch.records:
        ms[r["annotator_id"]].append(r["annotation_ms"])
    med = {k: sorted(v)[len(v) // 2] for k, v in ms.items()}
    spam = [med[a.annotator_id] for a in big_batch.annotators if a.kind == "spammer"]
    good = [med[a.annotator_id] for a in big_batch.annotators if a.kind == "good"]
    assert max(spam) < min(good)


def test_bad_rows_are_tagged_and_counted(hh_pairs):
    pairs = hh_pairs[:400]
    rate = 0.05
    batch = simulate_comparisons(pairs, dates=DATES, labels_per_pair=5, seed=5, bad_row_rate=rate)
    assert len(batch.records) == 2000
    assert batch.n_bad == round(rate * 2000) == 100
    assert sum(k is not None for k in batch.bad_kinds) == batch.n_bad
    counts = batch.bad_counts()
    assert set(counts) == set(BAD_KINDS) and sum(counts.values()) == 100
    id_counts = Counter(r["comparison_id"] for r in batch.records)
    for rec, kind, day in zip(batch.records, batch.bad_kinds, batch.record_dates):
        if kind is None:
            assert rec["label"] in LABELS and rec.get("annotator_id")
            assert rec["response_a"] != rec["response_b"] and _day(rec["created_at"]) == day
        elif kind == "bad_label":
            assert rec["label"] in ("A", "B", "maybe")
        elif kind == "missing_annotator_id":
            assert rec.get("annotator_id") is None
        elif kind == "identical_responses":
            assert rec["response_a"] == rec["response_b"]
        elif kind == "created_at_outside_day":
            assert _day(rec["created_at"]) != day
        elif kind == "duplicate_comparison_id":
            assert id_counts[rec["comparison_id"]] >= 2
    n_dup_rows = sum(c - 1 for c in id_counts.values())
    assert n_dup_rows == counts["duplicate_comparison_id"]
    clean = simulate_comparisons(pairs, dates=DATES, labels_per_pair=5, seed=5)
    # corruption is applied in place: the clean rows are unchanged
    for rec, kind, ref in zip(batch.records, batch.bad_kinds, clean.records):
        if kind is None:
            assert rec == ref


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_write_landing_round_trip(hh_pairs, tmp_path, fmt):
    batch = simulate_comparisons(hh_pairs[:60], dates=DATES, labels_per_pair=3, seed=2, bad_row_rate=0.1)
    paths = write_landing(batch, tmp_path, fmt=fmt)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f"landing/comparisons/date={d}/{batch.batch_id}.{fmt}" for d in DATES
    ]
    expected = Counter(batch.record_dates)
    total = 0
    for p, d in zip(paths, DATES):
        if fmt == "parquet":
            df = pl.read_parquet(p)
        elif fmt == "jsonl.gz":
            df = pl.read_ndjson(io.BytesIO(gzip.decompress(p.read_bytes())))
        else:
            df = pl.read_ndjson(p)
        assert df.height == expected[d]
        assert set(df.columns) <= set(FIELD_NAMES)
        assert df["annotator_id"].null_count() == sum(
            r.get("annotator_id") is None for r, rd in zip(batch.records, batch.record_dates) if rd == d
        )
        total += df.height
    assert total == len(batch.records)


def test_argument_validation(hh_pairs):
    pairs = hh_pairs[:5]
    with pytest.raises(ValueError):
        simulate_comparisons(pairs, dates=[], seed=0)
    with pytest.raises(ValueError):
        simulate_comparisons(pairs, dates=["2024-5-1"], seed=0)
    with pytest.raises(ValueError):
        simulate_comparisons(pairs, dates=DATES, labels_per_pair=13, seed=0)
    with pytest.raises(ValueError):
        simulate_comparisons(pairs, dates=DATES, bad_row_rate=1.5)
    with pytest.raises(ValueError):
        simulate_comparisons([{"prompt": "p", "chosen": "x", "rejected": "x"}], dates=DATES)
    with pytest.raises(ValueError):
        write_landing(simulate_comparisons(pairs, dates=DATES), "/tmp/unused", fmt="csv")
