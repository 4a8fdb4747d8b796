"""Stratified audit sampling: which served compared pairs humans judge each day for the human–RM correlation monitor.

The day's served compared pairs (the serving log, texts included: ``ServeSettings.log_texts``) are cut into strata:
prompt cluster (k-means on the logged 32-d prompt embeddings, fitted once and stored so a cluster is the same region
every day) × score band (the model's confidence max(p_a, 1 − p_a)). Each stratum h gets an allocation weight

    w_h = N_h · S_h · (1 + drift_boost · drift_c)

— Neyman's n_h ∝ N_h·S_h, where S_h is the standard deviation of "the humans disagree with the model's favourite":
√(d_h(1 − d_h)), with d_h the disagreement a calibrated model predicts (mean of 1 − max(p, 1 − p) over the stratum)
scaled by its cluster's observed-over-expected disagreement in the past ``history_days`` of audits (a prior of
``prior_strength`` expected disagreements keeps a cluster with few audits near 1); and drift_c ∈ [0, 1] the larger of
the cluster's excess disagreement (a z-score, full at ``drift_z``) and the change of its traffic share against past
days (a doubling or halving is full). Every non-empty stratum gets ``floor`` pairs, the rest of the budget goes in
proportion to w_h (never more than a stratum holds), and each stratum's pairs are a seeded simple random sample, so
a pair's inclusion probability is exactly π = n_h / N_h. The sample is stored with π under
``annotation/audit/date=…/sample.parquet`` (and the strata under ``strata.parquet``): the correlation monitor weights
each audited pair by 1/π (Horvitz–Thompson), so oversampling a stratum does not change what it estimates.
No Dagster here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.annotation.settings import AuditSettings
from rlhf_assets.storage import Storage

AUDIT_DIR = ("annotation", "audit")
EMBEDDING_DIM = 32

SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(), "prompt_sha256": pl.String(), "first": pl.String(), "second": pl.String(),
    "cluster": pl.Int64(), "band": pl.Int64(), "stratum": pl.String(), "p_first": pl.Float64(),
    "inclusion_probability": pl.Float64(), "artifact_id": pl.String(),
}


class AuditInputError(ValueError):
    """The serving log cannot be audited as asked (the message says why)."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# the day's candidates ------------------------------------------------------------------------------------------------
def candidate_pairs(log: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The distinct compared pairs of a serving log with their texts: item_id, prompt, response_a, response_b (as
    served first), prompt_sha256, first, second (the responses' sha256, sorted, as the correlation monitor keys
    them), p_a, p_first, embedding, artifact_id, release, policy/time; and how many pairs had no texts (logged
    with ``log_texts`` off), which cannot be audited."""
    compare = log.filter(pl.col("endpoint") == "compare")
    a = compare.filter(pl.col("side") == "a").select(
        "request_id", "item", "time", "artifact_id", "release", "prompt_sha256", "p_a", "embedding", "prompt",
        pl.col("response").alias("response_a"), pl.col("response_sha256").alias("sha_a"))
    b = compare.filter(pl.col("side") == "b").select(
        "request_id", "item", pl.col("response").alias("response_b"), pl.col("response_sha256").alias("sha_b"))
    pairs = a.join(b, on=["request_id", "item"], how="inner")
    has_text = pl.col("prompt").is_not_null() & pl.col("response_a").is_not_null() & pl.col("response_b").is_not_null()
    without = pairs.filter(~has_text).height
    a_first = pl.col("sha_a") <= pl.col("sha_b")
    pairs = (pairs.filter(has_text).with_columns(
        pl.when(a_first).then("sha_a").otherwise("sha_b").alias("first"),
        pl.when(a_first).then("sha_b").otherwise("sha_a").alias("second"),
        pl.when(a_first).then(pl.col("p_a")).otherwise(1.0 - pl.col("p_a")).alias("p_first"))
        .sort("time").unique(["prompt_sha256", "first", "second"], keep="first", maintain_order=True))
    item_id = pl.concat_str("prompt_sha256", "first", "second").map_elements(
        lambda s: "audit-" + _sha(s)[:20], return_dtype=pl.String)
    return pairs.with_columns(item_id.alias("item_id")).drop("sha_a", "sha_b", "request_id", "item"), without


# clusters ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clusters:
    centroids: np.ndarray  # k × 32, on unit-normalised embeddings
    fitted_on: str

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        x = _normalised(embeddings)
        return ((x[:, None, :] - self.centroids[None]) ** 2).sum(-1).argmin(1).astype(np.int64)


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[1] != EMBEDDING_DIM:
        raise AuditInputError(f"prompt embeddings must be n × {EMBEDDING_DIM}; got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_clusters(embeddings: np.ndarray, k: int, seed: int, day: str) -> Clusters:
    """k-means (scikit-learn, k-means++ with 4 restarts) on the unit-normalised prompt embeddings."""
    from sklearn.cluster import KMeans

    x = _normalised(embeddings)
    k = max(1, min(k, len(np.unique(x.round(6), axis=0))))
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    return Clusters(model.cluster_centers_, day)


def load_or_fit_clusters(storage: Storage, embeddings: np.ndarray, settings: AuditSettings, day: str) -> Clusters:
    """The stored clusters, or a fit on these embeddings (stored) when there are none or ``clusters`` changed."""
    path = storage.path(*AUDIT_DIR, "clusters.json")
    if storage.exists(path):
        stored = storage.read_json(path)
        if stored.get("k_asked") == settings.clusters:
            return Clusters(np.asarray(stored["centroids"], np.float64), stored["fitted_on"])
    clusters = fit_clusters(embeddings, settings.clusters, settings.seed, day)
    storage.write_json(path, {"k_asked": settings.clusters, "fitted_on": day,
                              "centroids": clusters.centroids.tolist()})
    return clusters


def bands(p: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Score band of each pair: how many of ``edges`` its confidence max(p, 1 − p) reaches (0: nearest to a tie)."""
    conf = np.maximum(p, 1.0 - p)
    return np.searchsorted(np.asarray(edges), conf, side="right").astype(np.int64)


# what past audits say about each cluster ----------------------------------------------------------------------------
def cluster_history(storage: Storage, day: str, days: int) -> pl.DataFrame:
    """Per cluster over the ``days`` days before ``day``: pairs served (N, from the strata tables), audited pairs,
    observed disagreements (the humans' majority against the model's favourite, ties ½) and the disagreements a
    calibrated model expects (Σ 1 − max(p, 1 − p)) and their variance."""
    from rlhf_assets.automation.correlation import read_audits

    start = date.fromisoformat(day)
    past = [(start - timedelta(days=i)).isoformat() for i in range(1, days + 1)]
    served, samples, audits = [], [], []
    for d in past:
        strata_path = storage.path(*AUDIT_DIR, f"date={d}", "strata.parquet")
        if storage.exists(strata_path):
            served.append(storage.read_parquet(strata_path).select("cluster", "size"))
        sample_path = storage.path(*AUDIT_DIR, f"date={d}", "sample.parquet")
        if storage.exists(sample_path):
            samples.append(storage.read_parquet(sample_path))
    # audits of these samples may be answered on any day up to the queue's day
    for d in past:
        audits.append(read_audits(storage, d))
    if not samples:
        return summarize_history(None, None, None)
    humans = pl.concat(audits).group_by("prompt_sha256", "first", "second").agg(
        pl.col("prefers_first").mean().alias("human"))
    return summarize_history(pl.concat(samples), humans, pl.concat(served) if served else None)


HISTORY_SCHEMA = {"cluster": pl.Int64, "served": pl.Int64, "audited": pl.Int64, "disagreements": pl.Float64,
                  "expected": pl.Float64, "expected_var": pl.Float64}


def summarize_history(sample: pl.DataFrame | None, humans: pl.DataFrame | None,
                      served: pl.DataFrame | None) -> pl.DataFrame:
    """Per cluster: pairs served (Σ size of ``served``: cluster, size), audited pairs of ``sample`` (prompt_sha256,
    first, second, cluster, p_first) that ``humans`` (the keys and human: the share preferring first) judged, the
    disagreements (ties ½) and the disagreements a calibrated model expects, with their variance."""
    empty = pl.DataFrame(schema=HISTORY_SCHEMA)
    if sample is None or sample.height == 0:
        return empty
    sample = sample.unique(["prompt_sha256", "first", "second"], keep="last")
    joined = sample.join(humans, on=["prompt_sha256", "first", "second"], how="inner")
    model_first = pl.col("p_first") >= 0.5
    e = 1.0 - pl.max_horizontal("p_first", 1.0 - pl.col("p_first"))
    per = joined.group_by("cluster").agg(
        pl.len().cast(pl.Int64).alias("audited"),
        pl.when(pl.col("human") == 0.5).then(0.5).when((pl.col("human") > 0.5) == model_first).then(0.0)
        .otherwise(1.0).sum().alias("disagreements"),
        e.sum().alias("expected"), (e * (1.0 - e)).sum().alias("expected_var"))
    sizes = (served.group_by("cluster").agg(pl.col("size").sum().cast(pl.Int64).alias("served"))
             if served is not None and served.height else pl.DataFrame(schema={"cluster": pl.Int64,
                                                                               "served": pl.Int64}))
    return sizes.join(per, on="cluster", how="full", coalesce=True).with_columns(
        pl.col("served").fill_null(0), pl.col("audited").fill_null(0),
        *(pl.col(c).fill_null(0.0) for c in ("disagreements", "expected", "expected_var"))).select(empty.columns)


# the strata and their allocation -------------------------------------------------------------------------------------
def strata_table(cluster: np.ndarray, band: np.ndarray, p: np.ndarray, history: pl.DataFrame,
                 settings: AuditSettings) -> pl.DataFrame:
    """One row per non-empty stratum: cluster, band, size N, predicted disagreement d, S = √(d(1 − d)), the cluster's
    drift signal (and its parts) and the allocation weight N·S·(1 + drift_boost·drift)."""
    conf = np.maximum(p, 1.0 - p)
    frame = pl.DataFrame({"cluster": cluster, "band": band, "e": 1.0 - conf})
    strata = frame.group_by("cluster", "band").agg(pl.len().cast(pl.Int64).alias("size"),
                                                   pl.col("e").mean().alias("expected_disagreement"))
    total_today = len(cluster)
    per_cluster = frame.group_by("cluster").agg(pl.len().alias("today"))
    hist = history.with_columns(pl.col("cluster").cast(pl.Int64))
    served_total = float(hist["served"].sum()) if hist.height else 0.0
    m = settings.prior_strength
    rows = []
    cluster_stats: dict[int, dict[str, float]] = {}
    for c, today in per_cluster.iter_rows():
        h = hist.filter(pl.col("cluster") == c)
        x, e, v, served = ((float(h[k][0]) for k in ("disagreements", "expected", "expected_var", "served"))
                           if h.height else (0.0, 0.0, 0.0, 0.0))
        ratio = (x + m) / (e + m)  # observed / expected disagreement, shrunk toward 1 (calibrated)
        z = (x - e) / np.sqrt(v + 1.0)  # +1: a cluster with few audits cannot reach full drift on one pair
        share_today = today / total_today
        share_past = served / served_total if served_total else share_today
        shift = abs(np.log((share_today + 1e-3) / (share_past + 1e-3))) / np.log(2.0)
        drift = float(np.clip(max(z / settings.drift_z, shift), 0.0, 1.0))
        cluster_stats[int(c)] = {"ratio": ratio, "z": float(z), "share_shift": float(shift), "drift": drift,
                                 "audited_before": float(h["audited"][0]) if h.height else 0.0}
    for r in strata.iter_rows(named=True):
        s = cluster_stats[r["cluster"]]
        d = float(np.clip(r["expected_disagreement"] * s["ratio"], 0.01, 0.99))
        sd = float(np.sqrt(d * (1.0 - d)))
        weight = r["size"] * sd * (1.0 + settings.drift_boost * s["drift"])
        rows.append({**r, "disagreement": d, "sd": sd, "drift": s["drift"], "excess_z": s["z"],
                     "share_shift": s["share_shift"], "audited_before": s["audited_before"], "weight": weight})
    out = pl.DataFrame(rows).sort("cluster", "band")
    return out.with_columns(pl.format("c{}-b{}", "cluster", "band").alias("stratum"))


def allocate(sizes: np.ndarray, weights: np.ndarray, budget: int, floor: int) -> np.ndarray:
    """Pairs per stratum: min(floor, N_h) each (the highest weights first when the floors alone exceed the budget),
    the rest ∝ weight, never more than N_h (water-filling), integers by largest remainder; sums to
    min(budget, ΣN)."""
    sizes = np.asarray(sizes, np.int64)
    weights = np.maximum(np.asarray(weights, np.float64), 0.0)
    if budget >= sizes.sum():
        return sizes.copy()
    n = np.zeros_like(sizes)
    order = np.lexsort((np.arange(len(sizes)), -weights))  # highest weight first, ties by position
    left = budget
    for i in order:
        take = min(floor, sizes[i], left)
        n[i], left = take, left - take
    while left > 0:
        room = sizes - n
        open_ = room > 0
        w = np.where(open_, weights, 0.0)
        if w.sum() <= 0:
            w = open_.astype(np.float64)  # no weight left anywhere: spread evenly over what has room
        share = np.minimum(left * w / w.sum(), room)
        whole = np.floor(share).astype(np.int64)
        if whole.sum() == 0:  # fewer pairs left than strata asking: largest fractional shares first
            for i in np.lexsort((np.arange(len(sizes)), -share)):
                if left == 0:
                    break
                if room[i] > 0 and share[i] > 0:
                    n[i], left = n[i] + 1, left - 1
            continue
        n, left = n + whole, left - int(whole.sum())
    return n


@dataclass
class AuditSample:
    """The day's sample: the chosen pairs (with texts, stratum and inclusion probability), the strata table and
    counts for the asset's metadata."""

    pairs: pl.DataFrame
    strata: pl.DataFrame
    candidates: int
    without_texts: int
    budget_pairs: int


def sample_audits(candidates: pl.DataFrame, clusters: Clusters, history: pl.DataFrame, settings: AuditSettings,
                  day: str) -> AuditSample:
    """Stratify ``candidates`` (candidate_pairs), allocate the day's pairs and draw them (seeded by seed and day)."""
    budget_pairs = settings.daily_label_budget // settings.annotators_per_pair
    if budget_pairs < 1:
        raise AuditInputError(f"daily_label_budget {settings.daily_label_budget} is below annotators_per_pair "
                              f"{settings.annotators_per_pair}: not one pair can be audited")
    if candidates.height == 0:
        empty = candidates.with_columns(pl.lit(None, pl.Int64).alias("cluster"), pl.lit(None, pl.Int64).alias("band"),
                                        pl.lit(None, pl.String).alias("stratum"),
                                        pl.lit(None, pl.Float64).alias("inclusion_probability"))
        return AuditSample(empty, pl.DataFrame(), 0, 0, budget_pairs)
    emb = np.asarray(candidates["embedding"].to_list(), np.float64)
    p = candidates["p_a"].fill_null(0.5).to_numpy()
    cluster, band = clusters.assign(emb), bands(p, settings.score_bands)
    strata = strata_table(cluster, band, p, history, settings)
    alloc = allocate(strata["size"].to_numpy(), strata["weight"].to_numpy(), budget_pairs, settings.floor)
    strata = strata.with_columns(pl.Series("allocated", alloc, pl.Int64)).with_columns(
        (pl.col("allocated") / pl.col("size")).alias("inclusion_probability"))
    rng = np.random.default_rng([settings.seed, int(day.replace("-", ""))])
    index = {(c, b): i for i, (c, b) in enumerate(zip(strata["cluster"], strata["band"], strict=True))}
    stratum_of = np.array([index[(int(c), int(b))] for c, b in zip(cluster, band, strict=True)])
    chosen = []
    for i, n in enumerate(alloc):
        members = np.flatnonzero(stratum_of == i)
        chosen.extend(rng.choice(members, int(n), replace=False).tolist())
    chosen = np.sort(np.asarray(chosen, np.int64))
    pi = strata["inclusion_probability"].to_numpy()[stratum_of]
    labelled = candidates.with_columns(pl.Series("cluster", cluster), pl.Series("band", band),
                                       pl.Series("stratum", strata["stratum"].to_numpy()[stratum_of]),
                                       pl.Series("inclusion_probability", pi))
    return AuditSample(labelled[chosen], strata, candidates.height, 0, budget_pairs)


# assignments and storage ---------------------------------------------------------------------------------------------
def assignments(sample: AuditSample, annotators: list[str], settings: AuditSettings, day: str) -> pl.DataFrame:
    """Each sampled pair asked of ``annotators_per_pair`` distinct annotators (round robin), item_kind audit,
    priority = the stratum's allocation weight per pair (normalised to 1 for the most oversampled stratum)."""
    k = settings.annotators_per_pair
    if len(annotators) < k:
        raise AuditInputError(f"{k} annotator(s) per audited pair needed, {len(annotators)} available "
                              f"({', '.join(annotators) or 'none'}): add auditors to the roster or AuditSettings.auditors")
    from rlhf_assets.annotation.queue import ASSIGNMENT_SCHEMA

    pairs = sample.pairs
    if pairs.height == 0:
        return pl.DataFrame(schema=ASSIGNMENT_SCHEMA)
    top = float(pairs["inclusion_probability"].max())
    rows = []
    for j, r in enumerate(pairs.iter_rows(named=True)):
        for i in range(k):
            rows.append({
                "assignment_id": f"{r['item_id']}-{day}-{i}", "day": day,
                "annotator_id": annotators[(j * k + i) % len(annotators)], "item_id": r["item_id"],
                "item_kind": "audit", "round": 0, "prompt": r["prompt"], "response_a": r["response_a"],
                "response_b": r["response_b"], "policy_a": None, "policy_b": None, "temperature": None,
                "batch_id": f"audit-{day}-{r['stratum']}", "expected_label": None,
                "priority": r["inclusion_probability"] / top})
    return pl.DataFrame(rows)


def write_sample(storage: Storage, day: str, sample: AuditSample) -> None:
    """The day's sample (keys, stratum, π) and strata table, beside the queue (replaced whole)."""
    folder = storage.path(*AUDIT_DIR, f"date={day}")
    keep = sample.pairs.select([c for c in SAMPLE_SCHEMA if c in sample.pairs.columns]) if sample.pairs.height \
        else pl.DataFrame(schema=SAMPLE_SCHEMA)
    storage.write_parquet(folder / "sample.parquet", keep)
    if sample.strata.height:
        storage.write_parquet(folder / "strata.parquet", sample.strata)


SAMPLES_INDEX = ("monitoring", "audit_samples.parquet")
WEIGHT_KEYS: dict[str, pl.DataType] = {"prompt_sha256": pl.String(), "first": pl.String(), "second": pl.String(),
                                       "inclusion_probability": pl.Float64()}


def audit_weights(storage: Storage) -> pl.DataFrame:
    """Every sampled pair's Horvitz–Thompson weight 1/π (its latest sample): prompt_sha256, first, second, weight.
    The samples' keys and π are kept in an incremental index (``monitoring/audit_samples.parquet``,
    rlhf_assets/file_index.py): only the days whose sample.parquet is new or rewritten are read."""
    from rlhf_assets.file_index import FileIndex, dated_files

    index = FileIndex(storage, SAMPLES_INDEX, WEIGHT_KEYS, storage.read_parquet)
    return weights_from_samples(index.refresh(dated_files(storage, *AUDIT_DIR, name="sample.parquet")))


def weights_from_samples(samples: pl.DataFrame) -> pl.DataFrame:
    """The weights 1/π of the samples' rows (oldest day first: a pair's latest sample wins; π = 0 left out)."""
    return (samples.unique(["prompt_sha256", "first", "second"], keep="last", maintain_order=True)
            .filter(pl.col("inclusion_probability") > 0)
            .select("prompt_sha256", "first", "second", (1.0 / pl.col("inclusion_probability")).alias("weight"))
            .cast({"prompt_sha256": pl.String, "first": pl.String, "second": pl.String, "weight": pl.Float64}))


def build_audit_queue(storage: Storage, day: str, settings: AuditSettings, annotators: list[str]) -> dict[str, Any]:
    """Read the day's serving log, sample, write the queue (annotation/queue.py) and the sample. Returns the sample,
    the assignments and the queue path."""
    from rlhf_assets.annotation.queue import write_queue
    from rlhf_assets.serving.log import read_serving_log

    candidates, without = candidate_pairs(read_serving_log(storage, day))
    history = cluster_history(storage, day, settings.history_days)
    clusters = (load_or_fit_clusters(storage, np.asarray(candidates["embedding"].to_list()), settings, day)
                if candidates.height else None)
    sample = sample_audits(candidates, clusters, history, settings, day)
    sample.without_texts = without
    queue = assignments(sample, annotators, settings, day)
    path = write_queue(storage, day, "audit", queue)  # an empty day replaces an earlier materialization's queue
    write_sample(storage, day, sample)
    return {"sample": sample, "assignments": queue, "path": path,
            "clusters_fitted_on": clusters.fitted_on if clusters else None}
