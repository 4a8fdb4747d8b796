"""The stratified audit sampler (annotation/audit.py): allocation, inclusion probabilities, the drift and variance
boosts, determinism, the texts it queues from the serving log, and the HT-weighted correlation it feeds."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from rlhf_assets.annotation.audit import (
    AuditInputError,
    allocate,
    assignments,
    audit_weights,
    build_audit_queue,
    candidate_pairs,
    fit_clusters,
    sample_audits,
    summarize_history,
)
from rlhf_assets.annotation.queue import read_queue
from rlhf_assets.annotation.settings import AuditSettings
from rlhf_assets.automation.correlation import correlations, read_audits, served_pairs, weighted_spearman
from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets.serving.log import LOG_SCHEMA
from rlhf_assets.serving.traffic import write_audits
from rlhf_assets.storage import Storage
from rlhf_assets_tests.annotation.audit_support import log_rows, write_log

DAY = "2025-06-02"


def _candidates(n_per_cluster=(300, 300), seed=0) -> tuple[pl.DataFrame, np.ndarray]:
    """Pairs in well-separated prompt clusters, with calibrated-looking P(a ≻ b)."""
    rng = np.random.default_rng(seed)
    emb = np.concatenate([rng.normal(size=(n, 32)) + 6 * np.eye(32)[c] for c, n in enumerate(n_per_cluster)])
    n = len(emb)
    p = 1.0 / (1.0 + np.exp(-1.5 * rng.normal(size=n)))
    keys = [f"p{i}" for i in range(n)]
    frame = pl.DataFrame({"item_id": keys, "prompt_sha256": keys, "first": "a", "second": "b", "p_a": p,
                          "p_first": p, "embedding": emb.tolist(), "prompt": "q", "response_a": "x",
                          "response_b": "y", "artifact_id": "m"})
    return frame, np.repeat(np.arange(len(n_per_cluster)), n_per_cluster)


def _no_history():
    return summarize_history(None, None, None)


def test_allocation_respects_budget_floors_and_sizes():
    sizes, weights = np.array([50, 3, 40, 1, 200]), np.array([10.0, 1.0, 0.0, 5.0, 100.0])
    n = allocate(sizes, weights, budget=40, floor=2)
    assert n.sum() == 40 and (n <= sizes).all()
    assert (n >= np.minimum(2, sizes)).all()  # every non-empty stratum its floor, even a zero-weight one
    assert n[4] > n[0] > n[2]  # the rest by weight
    # a budget above what was served takes everything
    assert (allocate(sizes, weights, budget=10_000, floor=2) == sizes).all()
    # floors beyond the budget: the highest weights get theirs first
    n = allocate(np.array([10, 10, 10]), np.array([1.0, 3.0, 2.0]), budget=3, floor=2)
    assert n.tolist() == [0, 2, 1]
    # a stratum capped at its size passes its share on (water-filling)
    n = allocate(np.array([5, 100]), np.array([1000.0, 1.0]), budget=50, floor=0)
    assert n.tolist() == [5, 45]


def test_sample_within_budget_with_exact_inclusion_probabilities_and_deterministic():
    frame, _ = _candidates()
    settings = AuditSettings(clusters=2, daily_label_budget=60, floor=2)
    clusters = fit_clusters(np.asarray(frame["embedding"].to_list()), 2, 0, DAY)
    sample = sample_audits(frame, clusters, _no_history(), settings, DAY)
    strata = sample.strata
    assert sample.pairs.height == 60 == strata["allocated"].sum()
    assert (strata["allocated"] >= 2).all() and (strata["allocated"] <= strata["size"]).all()
    # π = n_h / N_h, the same for every pair of a stratum; Σ 1/π over the sample estimates N exactly per stratum
    for row in strata.iter_rows(named=True):
        drawn = sample.pairs.filter(pl.col("stratum") == row["stratum"])
        assert drawn.height == row["allocated"]
        assert np.allclose(drawn["inclusion_probability"], row["allocated"] / row["size"])
        assert np.isclose((1.0 / drawn["inclusion_probability"]).sum(), row["size"])
    again = sample_audits(frame, clusters, _no_history(), settings, DAY)
    assert again.pairs["item_id"].to_list() == sample.pairs["item_id"].to_list()
    other_day = sample_audits(frame, clusters, _no_history(), settings, "2025-06-03")
    other_seed = sample_audits(frame, clusters, _no_history(), AuditSettings(clusters=2, daily_label_budget=60,
                                                                              seed=1), DAY)
    assert other_day.pairs["item_id"].to_list() != sample.pairs["item_id"].to_list()
    assert other_seed.pairs["item_id"].to_list() != sample.pairs["item_id"].to_list()


def test_near_ties_are_oversampled_per_pair_neyman():
    frame, _ = _candidates()
    settings = AuditSettings(clusters=1, daily_label_budget=90, floor=0)
    clusters = fit_clusters(np.asarray(frame["embedding"].to_list()), 1, 0, DAY)
    strata = sample_audits(frame, clusters, _no_history(), settings, DAY).strata.sort("band")
    # band 0 (near-ties: disagreement ≈ ½, the largest spread) gets the highest inclusion probability
    pi = strata["inclusion_probability"].to_list()
    assert pi[0] > pi[1] > pi[2]


def test_a_cluster_whose_audits_disagree_with_the_model_is_oversampled():
    frame, truth = _candidates()
    emb = np.asarray(frame["embedding"].to_list())
    clusters = fit_clusters(emb, 2, 0, DAY)
    settings = AuditSettings(clusters=2, daily_label_budget=60)
    cluster = clusters.assign(emb)
    drifted = int(cluster[0])
    # yesterday's audits: in the drifted cluster the humans chose against the model every time, elsewhere with it
    p = frame["p_first"].to_numpy()
    past = frame.select("prompt_sha256", "first", "second", "p_first").with_columns(pl.Series("cluster", cluster))
    humans = past.select("prompt_sha256", "first", "second", pl.Series(
        "human", np.where(cluster == drifted, (p < 0.5), (p >= 0.5)).astype(float)))
    served = pl.DataFrame({"cluster": [0, 1], "size": [300, 300]})
    history = summarize_history(past.sample(80, seed=0), humans, served)
    boosted = sample_audits(frame, clusters, history, settings, DAY)
    plain = sample_audits(frame, clusters, _no_history(), settings, DAY)

    def share(sample):
        return sample.pairs.filter(pl.col("cluster") == drifted).height / sample.pairs.height

    assert share(plain) == pytest.approx(0.5, abs=0.1)
    assert share(boosted) > 0.7
    assert boosted.strata.filter(pl.col("cluster") == drifted)["drift"].min() == 1.0
    assert boosted.strata.filter(pl.col("cluster") != drifted)["drift"].max() < 0.5
    # the oversampled stratum's pairs carry a larger π, so each counts less when reweighted
    pi = boosted.pairs.group_by("cluster").agg(pl.col("inclusion_probability").mean())
    assert pi.filter(pl.col("cluster") == drifted).item(0, 1) > pi.filter(pl.col("cluster") != drifted).item(0, 1)


def test_bad_budget_and_too_few_annotators_are_refused():
    frame, _ = _candidates()
    clusters = fit_clusters(np.asarray(frame["embedding"].to_list()), 2, 0, DAY)
    with pytest.raises(AuditInputError, match="not one pair"):
        sample_audits(frame, clusters, _no_history(), AuditSettings(daily_label_budget=2, annotators_per_pair=3), DAY)
    settings = AuditSettings(clusters=2, daily_label_budget=20, annotators_per_pair=2)
    sample = sample_audits(frame, clusters, _no_history(), settings, DAY)
    with pytest.raises(AuditInputError, match="2 annotator"):
        assignments(sample, ["solo"], settings, DAY)
    with pytest.raises(ValueError, match="score_bands"):
        AuditSettings(score_bands=(0.8, 0.6))


def test_weighted_spearman_equals_replication_and_reweighting_removes_oversampling_bias():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=40)
    w = rng.integers(1, 4, size=40).astype(float)
    from scipy.stats import spearmanr

    assert weighted_spearman(x, y, w) == pytest.approx(spearmanr(np.repeat(x, w.astype(int)),
                                                                 np.repeat(y, w.astype(int)))[0])
    # a population where stratum B (10%) is reversed: oversampling B drags the plain estimate, 1/π restores it
    n_a, n_b = 9000, 1000
    xa, xb = rng.normal(size=n_a), rng.normal(size=n_b)
    pop_x = np.concatenate([xa, xb])
    pop_y = np.concatenate([xa + rng.normal(size=n_a), -xb + rng.normal(size=n_b)])
    truth = spearmanr(pop_x, pop_y)[0]
    take_a, take_b = rng.choice(n_a, 300, replace=False), n_a + rng.choice(n_b, 300, replace=False)
    idx = np.concatenate([take_a, take_b])
    weights = np.concatenate([np.full(300, n_a / 300), np.full(300, n_b / 300)])
    plain = spearmanr(pop_x[idx], pop_y[idx])[0]
    weighted = weighted_spearman(pop_x[idx], pop_y[idx], weights)
    assert abs(plain - truth) > 0.3 and abs(weighted - truth) < 0.08


def test_the_queue_carries_the_served_texts_and_the_monitor_reweights_its_answers(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    when = datetime.now(UTC)
    rows = log_rows(120, texts=True, when=when)
    # the same pair served twice is one candidate; a pair logged without texts cannot be audited
    rows += [dict(r, request_id="again") for r in rows[:2]]
    rows += [dict(r, request_id=f"blind{r['request_id']}", prompt=None, response=None,
                  prompt_sha256="0" * 64) for r in rows[2:4]]
    day = write_log(storage, rows)
    settings = AuditSettings(clusters=2, daily_label_budget=40, annotators_per_pair=2, floor=2)
    result = build_audit_queue(storage, day, settings, ["ann-1", "ann-2", "ann-3"])
    sample = result["sample"]
    assert sample.candidates == 120 and sample.without_texts == 1
    queue = read_queue(storage, day, "audit")
    assert queue.height == 40 and (queue["item_kind"] == "audit").all()
    assert queue["item_id"].n_unique() == 20
    per_item = queue.group_by("item_id").agg(pl.col("annotator_id").n_unique())
    assert (per_item["annotator_id"] == 2).all()  # two distinct annotators per audited pair
    logged = {r["prompt"]: (r["response"], r["prompt_sha256"]) for r in rows if r["side"] == "a" and r["prompt"]}
    for r in queue.iter_rows(named=True):
        assert logged[r["prompt"]][0] == r["response_a"]  # the texts the service scored, as it logged them
    assert queue["priority"].max() == 1.0 and queue["priority"].min() > 0
    # clusters are fitted once and kept
    assert storage.exists(storage.path("annotation", "audit", "clusters.json"))
    # answers of the queue land as audits; the monitor weights them by 1/π
    weights = audit_weights(storage)
    assert weights.height == 20 and np.allclose(
        weights.sort("prompt_sha256")["weight"], 1 / sample.pairs.sort("prompt_sha256")["inclusion_probability"])
    audit_rows = [{"comparison_id": r["assignment_id"], "prompt": r["prompt"], "response_a": r["response_a"],
                   "response_b": r["response_b"], "label": "a" if k % 3 else "b", "annotator_id": r["annotator_id"],
                   "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")} for k, r in enumerate(queue.iter_rows(named=True))]
    write_audits(storage, audit_rows, when)
    served = served_pairs(pl.DataFrame(rows, schema=LOG_SCHEMA))
    automation = AutomationSettings(min_audits=5, n_boot=100)
    plain = correlations(read_audits(storage, day), served, automation)
    weighted = correlations(read_audits(storage, day), served, automation, weights=weights)
    assert plain[0].n == weighted[0].n == 20
    assert weights["weight"].n_unique() > 1  # unequal π: the estimate moves
    assert plain[0].spearman != weighted[0].spearman
    # no sample weights at all: exactly the plain numbers
    assert correlations(read_audits(storage, day), served, automation,
                        weights=audit_weights(Storage(str(tmp_path / "empty"))))[0].spearman == plain[0].spearman


def test_an_empty_day_replaces_the_queue_and_a_log_without_texts_queues_nothing(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    when = datetime.now(UTC)
    day = write_log(storage, log_rows(10, texts=False, when=when))
    result = build_audit_queue(storage, day, AuditSettings(), ["a"])
    assert result["sample"].without_texts == 10 and result["sample"].candidates == 0
    assert read_queue(storage, day, "audit").height == 0
    candidates, without = candidate_pairs(pl.DataFrame(log_rows(3, texts=True, when=when), schema=LOG_SCHEMA))
    assert candidates.height == 3 and without == 0
