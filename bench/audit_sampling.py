"""Audit sampling: does stratified sampling (rlhf_assets.annotation.audit) catch a local human–RM correlation drop
sooner than uniform sampling, at the same daily label budget?

    python -m bench.audit_sampling [--runs 40] [--days 10] [--change-at 3] [--window 3] [--budget 100]
                                   [--pairs-per-day 1000] [--scenario shift|labels] [--region cluster|topic]
                                   [--share-before 0.05] [--share-after 0.2] [--preset small|tiny] [--quick] [--json]
    rlhf bench audit-sampling …

Traffic. Every HH-RLHF pair (2312) is scored once by the service's forward pass as bench/drift.py does it (``small``:
the pretrained all-MiniLM-L6-v2 with a seeded head; ``tiny`` for ``--quick``: a random-init BERT), which gives each
pair the 32-d prompt embedding the serving log holds. That head is untrained, so its margins carry no human
preference; the simulated reward model is calibrated by construction instead: P(a ≻ b) = σ(1.5·z) with z the
standardised margin (expected pairwise accuracy ≈ 0.72), and each simulated human prefers a with that probability.
Each day serves ``--pairs-per-day`` distinct pairs (a random side order each).

Drift confined to one region of prompt space (``--region cluster``: one cluster, ≈13% of the pairs, of a k-means fit
of the logged embeddings with k = 6 and its own seed — not the sampler's partition, which is fitted with k = 8 on
the first day's traffic, so the region spreads over several of the sampler's clusters; ``topic``: the crime/violence
keyword topic of bench/drift.py, which the 32-d embeddings hardly separate). Before day ``--change-at`` the region
is ``--share-before`` of each day's pairs; from then on its humans no longer follow the model (they prefer a with
probability ½: the human–RM correlation there drops to 0, elsewhere it stays), and in scenario ``shift`` (default)
its share of the traffic grows to ``--share-after`` — a kind of prompt the model rarely saw becomes popular and it
is wrong there; in scenario ``labels`` only the humans change, so nothing but the audits themselves can point the
sampler at the region. Each seed also runs without the change (false alarms).

Samplers, each with ``--budget`` labels a day (one annotator per audited pair):
- ``stratified``: annotation/audit.py as the audit_queue asset runs it (AuditSettings defaults: 8 k-means clusters
  fitted on day 0's traffic and kept, 3 score bands, floor 1, drift boost 10), fed back each day with the audits of
  the past 7 days (their excess disagreement with the model) and the clusters' traffic shares;
- ``uniform×m``: a simple random sample of the day's pairs with m times the budget (m = 1: the same budget).

The monitor (the same for both): each day, over the audits of the last ``--window`` days, per prompt cluster (the
sampler's), how much less often the humans agree with the model's favourite than the calibrated model predicts
(Σ max(p, 1 − p)): the excess disagreement, weighted by 1/π (Horvitz–Thompson), over its standard error; an alarm
when some cluster's is above the one-sided 1% Bonferroni bound over the clusters (a cluster needs ≥ 10 effective
pairs). (A per-cluster Spearman is no good here: its level depends on how spread the cluster's P values are, so
clusters differ without any drift and a cluster-versus-rest test alarms on clean traffic.) Delay: days from the
change to the first alarm (1 = on the audits of the change day); detected = an alarm before the run ends.
"Uniform labels to match": the smallest uniform budget that detects at least as often with a mean delay no longer.
Also measured: the global Spearman of the stratified audits, HT-weighted and unweighted, against the day's population
Spearman (every served pair labelled), before the change — the reweighting must remove the oversampling's bias.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import norm, spearmanr

from rlhf_assets.annotation.audit import Clusters, fit_clusters, sample_audits, summarize_history
from rlhf_assets.annotation.settings import AuditSettings
from rlhf_assets.automation.correlation import weighted_spearman

BETA = 1.5
MULTIPLES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
ALPHA = 0.01
SCENARIOS = ("shift", "labels")
REGIONS = {"cluster": "one region of the embedding space", "topic": "crime/violence keywords"}


def load_traffic(preset: str) -> dict[str, Any]:
    """Per HH pair: the prompt embedding, the standardised margin (chosen − rejected) and the topic flag."""
    from bench.drift import score_traffic

    t = score_traffic(preset)
    margin = t["scores"][0::2] - t["scores"][1::2]
    z = (margin - margin.mean()) / max(margin.std(), 1e-12)
    return {"emb": t["emb"][0::2].astype(np.float64), "z": z, "topic": t["topic"], "preset": preset,
            "artifact": t["artifact"], "scoring_s": t["seconds"]}


def drift_region(traffic: dict[str, Any], region: str) -> np.ndarray:
    """Which pairs the drift hits: ``topic``, the crime/violence keyword topic; ``cluster``, one region of the
    logged embedding space — a cluster of a k-means fit of its own (k = 6, seed 1234, on every prompt: not the
    sampler's partition, which is fitted with k = 8 on one day's traffic), the one whose size is nearest 15%."""
    if region == "topic":
        return traffic["topic"].astype(bool)
    from sklearn.cluster import KMeans

    x = traffic["emb"] / np.maximum(np.linalg.norm(traffic["emb"], axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=6, n_init=4, random_state=1234).fit_predict(x)
    sizes = np.bincount(labels, minlength=6) / len(labels)
    return labels == int(np.argmin(np.abs(sizes - 0.15)))


def alignment(region: np.ndarray, clusters: Clusters, emb: np.ndarray) -> float:
    """The largest share of the drift region that one of the sampler's clusters holds."""
    c = clusters.assign(emb[region])
    return float(np.bincount(c).max() / region.sum())


class Day:
    """One day's served pairs: index, P(a ≻ b), the humans' P(prefer a), cluster, and a candidates frame."""

    def __init__(self, traffic: dict[str, Any], rng: np.random.Generator, n: int, drifted: bool, clusters: Clusters,
                 region_share: float):
        inside = np.flatnonzero(traffic["region"])
        k = min(int(round(region_share * n)), len(inside))
        outside = np.flatnonzero(~traffic["region"])
        self.idx = np.sort(np.concatenate([rng.choice(inside, k, replace=False),
                                           rng.choice(outside, n - k, replace=False)]))
        a_is_chosen = rng.random(n) < 0.5
        p_chosen = 1.0 / (1.0 + np.exp(-BETA * traffic["z"][self.idx]))
        self.p = np.where(a_is_chosen, p_chosen, 1.0 - p_chosen)
        self.q = np.where(drifted & traffic["region"][self.idx], 0.5, self.p)
        self.human = (rng.random(n) < self.q).astype(np.float64)  # the label an auditor would give
        self.cluster = clusters.assign(traffic["emb"][self.idx]) if clusters is not None else None
        keys = [str(i) for i in self.idx]
        if clusters is None:
            return
        self.candidates = pl.DataFrame({
            "item_id": keys, "prompt_sha256": keys, "first": "a", "second": "b", "p_a": self.p, "p_first": self.p,
            "embedding": traffic["emb"][self.idx]})


def stratified(day: Day, d: int, clusters: Clusters, past: list[dict[str, Any]], settings: AuditSettings,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the day drawn by annotation/audit.py and their inclusion probabilities."""
    recent = past[-settings.history_days:]
    history = summarize_history(
        pl.concat([r["sample"] for r in recent]) if recent else None,
        pl.concat([r["humans"] for r in recent]) if recent else None,
        pl.concat([r["served"] for r in recent]) if recent else None)
    sample = sample_audits(day.candidates, clusters, history, settings, f"2025-06-{d + 1:02d}")
    pos = np.searchsorted(day.idx, sample.pairs["item_id"].cast(pl.Int64).to_numpy())
    return pos, sample.pairs["inclusion_probability"].to_numpy()


def remember(day: Day, pos: np.ndarray) -> dict[str, Any]:
    """What the next days' stratified queues learn from this day: its sample, the humans' answers, the sizes."""
    keys = [str(i) for i in day.idx[pos]]
    served = pl.DataFrame({"cluster": day.cluster}).group_by("cluster").agg(pl.len().cast(pl.Int64).alias("size"))
    return {"sample": pl.DataFrame({"prompt_sha256": keys, "first": "a", "second": "b",
                                    "cluster": day.cluster[pos].astype(np.int64), "p_first": day.p[pos]}),
            "humans": pl.DataFrame({"prompt_sha256": keys, "first": "a", "second": "b", "human": day.human[pos]}),
            "served": served}


def alarm(window: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], k: int) -> bool:
    """Some cluster's humans agree with the model's favourite less often than its calibrated P predicts: the
    HT-weighted excess disagreement Σw(max(p, 1 − p) − agree) over its standard error, above the one-sided
    Bonferroni bound over the k clusters (a cluster needs ≥ 10 effective pairs)."""
    human, p, w, cluster = (np.concatenate([part[i] for part in window]) for i in range(4))
    crit = norm.ppf(1.0 - ALPHA / k)
    expected = np.maximum(p, 1.0 - p)
    agree = ((human > 0.5) == (p > 0.5)).astype(np.float64)
    for c in range(k):
        ww = w[cluster == c]
        if ww.size == 0 or ww.sum() ** 2 / (ww ** 2).sum() < 10:
            continue
        e, a = expected[cluster == c], agree[cluster == c]
        excess = float(np.sum(ww * (e - a)))
        sd = float(np.sqrt(np.sum(ww ** 2 * e * (1.0 - e))))
        if sd > 0 and excess / sd > crit:
            return True
    return False


def run_once(traffic: dict[str, Any], seed: int, drift: bool, a: argparse.Namespace,
             settings: AuditSettings) -> dict[str, Any]:
    rng = np.random.default_rng(20_000 + seed)
    budgets = {"stratified": a.budget, **{f"uniform×{m:g}": int(round(m * a.budget)) for m in MULTIPLES}}
    windows: dict[str, list] = {name: [] for name in budgets}
    first_alarm: dict[str, int | None] = {name: None for name in budgets}
    false_alarms = {name: 0 for name in budgets}
    checks = 0
    past: list[dict[str, Any]] = []
    clusters = None
    bias, in_region = [], []
    for d in range(a.days):
        drifted = drift and d >= a.change_at
        share = a.share_after if drifted and a.scenario == "shift" else a.share_before
        if clusters is None:  # the asset fits its clusters once, on the first day's traffic, and keeps them
            day0 = Day(traffic, rng, a.pairs_per_day, False, None, share)
            clusters = fit_clusters(traffic["emb"][day0.idx], settings.clusters, settings.seed, "day0")
            captured = alignment(traffic["region"], clusters, traffic["emb"])
        day = Day(traffic, rng, a.pairs_per_day, drifted, clusters, share)
        pos, pi = stratified(day, d, clusters, past, settings)
        past.append(remember(day, pos))
        if drift and d >= a.change_at:
            in_region.append(float(traffic["region"][day.idx[pos]].mean()))
        draws = {"stratified": (pos, pi)}
        for name, b in budgets.items():
            if name != "stratified":
                b = min(b, a.pairs_per_day)
                draws[name] = (rng.choice(a.pairs_per_day, b, replace=False), np.full(b, b / a.pairs_per_day))
        if d < a.change_at:
            population = spearmanr(day.human, day.p)[0]
            w = 1.0 / pi
            bias.append((weighted_spearman(day.human[pos], day.p[pos], w) - population,
                         spearmanr(day.human[pos], day.p[pos])[0] - population))
        for name, (pos_, pi_) in draws.items():
            windows[name] = (windows[name] + [(day.human[pos_], day.p[pos_], 1.0 / pi_, day.cluster[pos_])])[-a.window:]
        if d >= a.window - 1:
            checks += 1
            for name in budgets:
                if alarm(windows[name], len(clusters.centroids)):
                    if d < a.change_at or not drift:
                        false_alarms[name] += 1
                    elif first_alarm[name] is None:
                        first_alarm[name] = d - a.change_at + 1
    return {"seed": seed, "drift": drift, "delay": first_alarm, "captured": captured, "in_region": in_region, "false_alarms": false_alarms, "checks": checks,
            "bias_ht": [b[0] for b in bias], "bias_unweighted": [b[1] for b in bias],
            "labels": {name: min(b, a.pairs_per_day) for name, b in budgets.items()}}


def summarize(results: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    drifted = [r for r in results if r["drift"]]
    clean = [r for r in results if not r["drift"]]
    rows = {}
    for name, labels in results[0]["labels"].items():
        delays = [r["delay"][name] for r in drifted]
        hit = [x for x in delays if x is not None]
        fa = sum(r["false_alarms"][name] for r in results)
        fa_checks = sum(r["checks"] for r in clean) + sum(min(r["checks"], max(a.change_at - a.window + 1, 0))
                                                         for r in drifted)
        rows[name] = {"labels_per_day": labels, "detected": len(hit) / len(delays) if delays else None,
                      "mean_delay_days": float(np.mean(hit)) if hit else None,
                      "median_delay_days": float(np.median(hit)) if hit else None,
                      "false_alarms_per_100_checks": 100.0 * fa / fa_checks if fa_checks else None}
    s = rows["stratified"]
    match = None
    for name, row in rows.items():
        if name == "stratified":
            continue
        if row["detected"] is not None and s["detected"] is not None and row["detected"] >= s["detected"] and (
                s["mean_delay_days"] is None or (row["mean_delay_days"] or np.inf) <= s["mean_delay_days"]):
            match = row["labels_per_day"]
            break
    u = rows["uniform×1"]
    target = (s["detected"] or 0) >= (u["detected"] or 0) and (
        u["mean_delay_days"] is None or (s["mean_delay_days"] is not None and
                                         s["mean_delay_days"] <= u["mean_delay_days"]))
    bias_ht = [b for r in results for b in r["bias_ht"]]
    bias_raw = [b for r in results for b in r["bias_unweighted"]]
    region_share = [x for r in drifted for x in r["in_region"]]
    return {"samplers": rows, "uniform_labels_to_match": match,
            "stratified_share_in_region_after_change": float(np.mean(region_share)) if region_share else None, "target_met": bool(target),
            "pre_change_estimate_error": {
                "ht_weighted_mean": float(np.mean(bias_ht)), "ht_weighted_sd": float(np.std(bias_ht)),
                "unweighted_mean": float(np.mean(bias_raw)), "unweighted_sd": float(np.std(bias_raw))}}


def main(a: argparse.Namespace) -> dict[str, Any]:
    settings = AuditSettings(daily_label_budget=a.budget, seed=0)
    traffic = load_traffic(a.preset)
    traffic["region"] = drift_region(traffic, a.region)
    t0 = time.perf_counter()
    results = []
    for seed in range(a.runs):
        for drift in (True, False):
            results.append(run_once(traffic, seed, drift, a, settings))
        print(f"run {seed + 1}/{a.runs} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    summary = {"setup": {"preset": a.preset, "artifact": traffic["artifact"], "pairs": len(traffic["z"]),
                         "region": a.region, "scenario": a.scenario, "share_before": a.share_before,
                         "share_after": a.share_after if a.scenario == "shift" else a.share_before,
                         "region_in_one_sampler_cluster": float(np.mean([r["captured"] for r in results])),
                         "scoring_s": traffic["scoring_s"],
                         "simulation_s": time.perf_counter() - t0, "runs": a.runs, "days": a.days,
                         "change_at": a.change_at, "window_days": a.window, "pairs_per_day": a.pairs_per_day,
                         "budget": a.budget, "alpha": ALPHA, "settings": settings.to_dict(), "cpus": os.cpu_count()},
               **summarize(results, a)}
    if a.json:
        print(json.dumps(summary, indent=2, default=float))
    else:
        print(table(summary))
    return summary


def table(s: dict[str, Any]) -> str:
    st = s["setup"]
    lines = [f"audit sampling: {st['runs']} seeded runs, {st['pairs_per_day']} served pairs/day; from day "
             f"{st['change_at']} the humans stop following the model on one region ({REGIONS[st['region']]}; at "
             f"most {st['region_in_one_sampler_cluster']:.0%} of it in one sampler cluster), whose traffic share goes "
             f"{st['share_before']:.0%} → {st['share_after']:.0%}; {st['days']} days, "
             f"monitor window {st['window_days']} days, preset {st['preset']} (scoring {st['scoring_s']:.0f} s, "
             f"simulation {st['simulation_s']:.0f} s, {st['cpus']} CPUs)",
             f"{'sampler':<15}{'labels/day':>11}{'detected':>10}{'mean delay':>12}{'median':>8}{'false alarms/100':>18}"]
    for name, r in s["samplers"].items():
        def f(x, fmt):
            return format(x, fmt) if x is not None else "-"
        lines.append(f"{name:<15}{r['labels_per_day']:>11}{f(r['detected'], '.0%'):>10}"
                     f"{f(r['mean_delay_days'], '.2f'):>12}{f(r['median_delay_days'], '.1f'):>8}"
                     f"{f(r['false_alarms_per_100_checks'], '.1f'):>18}")
    e = s["pre_change_estimate_error"]
    lines.append(f"uniform labels/day to match stratified: {s['uniform_labels_to_match'] or '> ' + str(max(r['labels_per_day'] for r in s['samplers'].values()))}; "
                 f"target (stratified detects at least as often and sooner at equal budget): "
                 f"{'met' if s['target_met'] else 'MISSED'}")
    if s["stratified_share_in_region_after_change"] is not None:
        lines.append(f"stratified labels in the drift region after the change: "
                     f"{s['stratified_share_in_region_after_change']:.0%} (uniform: {st['share_after']:.0%})")
    lines.append(f"global Spearman of the stratified audits − population, before the change: HT-weighted "
                 f"{e['ht_weighted_mean']:+.3f} ± {e['ht_weighted_sd']:.3f}, unweighted {e['unweighted_mean']:+.3f} "
                 f"± {e['unweighted_sd']:.3f}")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.audit_sampling", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=40, help="Seeded runs (each with and without the drift).")
    p.add_argument("--days", type=int, default=10, help="Days per run.")
    p.add_argument("--change-at", type=int, default=3, help="Days before the drift starts.")
    p.add_argument("--window", type=int, default=3, help="Days of audits the monitor looks at.")
    p.add_argument("--budget", type=int, default=100, help="Labels per day (one annotator per audited pair).")
    p.add_argument("--pairs-per-day", type=int, default=1000, help="Distinct compared pairs served per day.")
    p.add_argument("--region", default="cluster", choices=sorted(REGIONS),
                   help="Where the drift is: a region of the embedding space, or a keyword topic.")
    p.add_argument("--scenario", default="shift", choices=SCENARIOS,
                   help="shift: the region's traffic share grows when its humans stop following the model; labels: "
                        "only the humans change (nothing a label-free signal could see).")
    p.add_argument("--share-before", type=float, default=0.05, help="The region's share of the traffic before.")
    p.add_argument("--share-after", type=float, default=0.2, help="Its share after the change (scenario shift).")
    p.add_argument("--preset", default=None, choices=["tiny", "small"],
                   help="Reward model whose embeddings cluster the prompts (default small; tiny with --quick).")
    p.add_argument("--quick", action="store_true", help="tiny preset, 2 runs, 5 days: a smoke test.")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.days, a.change_at = 2, 5, 2
    a.preset = a.preset or ("tiny" if a.quick else "small")
    if a.change_at < 1 or a.days <= a.change_at or a.window < 1 or a.budget < 1 or a.pairs_per_day < a.budget:
        p.error("need 1 <= --change-at < --days, --window >= 1 and 1 <= --budget <= --pairs-per-day")
    return a


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    return main(parse(argv))


if __name__ == "__main__":
    cli()
