"""Drift detection: ours (rlhf_assets.evaluation.drift) vs Evidently's defaults, on the same windows, in one run.

    python -m bench.drift [--runs 20] [--windows 30] [--change-at 3] [--after 5] [--preset small|tiny] [--quick]
                          [--json]
    rlhf bench drift …

Traffic. Every (prompt, chosen) and (prompt, rejected) of the bundled HH-RLHF pairs (2312 pairs, 4624 items) is
scored once by a reward model built as bench/serving.py's ``prepare()`` builds it (``small``, the default: the
pretrained all-MiniLM-L6-v2 with a seeded head, so the prompt embeddings carry meaning; ``tiny``, for ``--quick``:
the random-init 2-layer BERT, whose embeddings hardly tell topics apart), max length 256, through the service's own
forward pass (``ServedModel.run``: score and 32-d prompt embedding). Each pair is a compared pair with a random side order, and
its p_a is the service's ``probability(margin)`` (these models have no calibration artifact, so it is the
Bradley–Terry sigmoid of the margin; every statistic is judged against its own null, so its scale does not matter).

Runs. The 370 pairs whose prompt is about crime or violence (a keyword cluster, ≈16% of HH prompts) are the
topic-change traffic; each of ``--runs`` seeded runs splits the other 1942 pairs in half at random: the reference
(971 pairs, 1942 items; prompts are the groups) and the traffic pool. A window is 500 items = 250 compared pairs
drawn without replacement. Our detector is calibrated once per run on the reference (``DriftSettings()``
defaults: k = 3, 100 null windows) and alarms on 2 of the last 3 windows or when the mean score shift pooled over
the last 3 windows is over k of its prompt-clustered standard errors (its pooled location rule). Evidently 0.7
gets the same reference and windows as data frames (score, p_a and the 32 embedding columns): its ``DataDriftPreset`` over score and p_a (per-column default tests: Wasserstein
distance normed > 0.1 for a reference over 1000 rows; dataset drift when ≥ 50% of the columns drift) and, for the
prompts, its embedding drift default (``EmbeddingsDrift`` with no method: a classifier, ROC AUC > 0.55 for a
reference over 1000 rows). Evidently alarms on a window when either says drift; it has no persistence rule, so its
figures are also given with our 2-of-3 rule applied to its window alarms.

Scenarios (the same run seeds, so the windows before the change are the same in every scenario):

- ``none``: ``--windows`` windows without drift: false alarms per 100 windows.
- ``score+0.25sd`` / ``score+0.5sd``: from window ``--change-at`` on, every score of the window is shifted by 0.25
  (0.5) reference sd (both sides of a pair, so p_a is unchanged).
- ``topic``: from the change on, the prompts are about a topic the reference never saw (crime or violence).
- ``label``: label drift as a label-free monitor can see it — the compared pairs get harder to call (as when the
  policy's candidates converge and human labels approach coin flips): from the change on, every pair is a near-tie
  of the pool (|p_a − 0.5| below the pool's median), so the expected pairwise accuracy E[max(p, 1 − p)] falls.
- ``topic-half`` / ``label-half``: harder variants (no target): half of each window's pairs as above, half as before.

Detection delay: the number of drifted windows seen when the detector first alarms (1 = on the first drifted
window); "missed" when it does not within ``--after`` drifted windows. Targets: ≤ 1 false alarm per 100 windows
without drift; every shift detected within 3 windows.

Evidently's ``EmbeddingsDrift`` metric also fits a t-SNE of the samples for its plot (≈35 s per window on 2 cores),
so the benchmark calls the drift method that metric picks by default (``model(bootstrap=reference rows < 1000)``)
directly; the full run checks once that the Report's value is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 500
TOPIC = re.compile(r"\b(steal|stole|rob|robbery|theft|shoplift|burglar|break into|hack|scam|fraud|launder|"
                   r"counterfeit|kill|murder|hurt|beat|punch|gun|guns|weapon|shoot|stab|bomb|attack|fight|poison)")
SCENARIOS = ("none", "score+0.25sd", "score+0.5sd", "topic", "label", "topic-half", "label-half")
TARGETED = SCENARIOS[1:5]  # the four shifts; the -half variants are harder, reported without a target
SHIFTS = {"score+0.25sd": 0.25, "score+0.5sd": 0.5}
MIXES = {"topic": ("topic", 1.0), "label": ("label", 1.0), "topic-half": ("topic", 0.5), "label-half": ("label", 0.5)}
EMB_COLUMNS = [f"emb_{j}" for j in range(32)]


# traffic ---------------------------------------------------------------------------------------------------------
def score_traffic(preset: str) -> dict[str, Any]:
    """Scores, prompt embeddings and topic flags of every HH-RLHF item (2i: chosen, 2i + 1: rejected of pair i)."""
    from bench.serving import prepare
    from rlhf_assets.serving.engine import ServedModel

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as root:
        setup = prepare(preset, Path(root))
        model = ServedModel(setup["dir"], setup["artifact"])
        texts = setup["texts"]
        seqs = [model.encode(p, r) for p, r in texts]
        order = np.argsort([-len(s.input_ids) for s in seqs], kind="stable")
        scores = np.empty(len(seqs))
        emb = np.empty((len(seqs), 32), dtype=np.float32)
        for i in range(0, len(seqs), 64):
            part = order[i:i + 64]
            s, e = model.run([seqs[j] for j in part])
            scores[part], emb[part] = s, e
        margin = scores[0::2] - scores[1::2]
        p_chosen = model.probability(margin)
        calibrated = model.calibrator is not None
    first_turn = [p.split("\n\nAssistant:")[0].lower() for p, _ in texts[0::2]]
    topic = np.array([bool(TOPIC.search(t)) for t in first_turn])
    return {"scores": scores, "emb": emb, "p_chosen": p_chosen, "topic": topic, "artifact": setup["artifact"],
            "preset": preset, "calibrated": calibrated, "seconds": time.perf_counter() - t0,
            "score_sd": float(scores.std())}


class Run:
    """One seeded run: the reference/pool split, the side order and the window draws."""

    def __init__(self, traffic: dict[str, Any], seed: int):
        self.t = traffic
        self.rng = np.random.default_rng(10_000 + seed)
        n_pairs = len(traffic["p_chosen"])
        self.topic_pool = np.flatnonzero(traffic["topic"])  # never in the reference nor before the change
        usual = self.rng.permutation(np.flatnonzero(~traffic["topic"]))
        self.ref_pairs, self.pool = np.sort(usual[: len(usual) // 2]), np.sort(usual[len(usual) // 2:])
        self.chosen_is_a = self.rng.random(n_pairs) < 0.5
        p = traffic["p_chosen"]
        self.p_a = np.where(self.chosen_is_a, p, 1.0 - p)
        conf = np.abs(self.p_a[self.pool] - 0.5)
        self.near_ties = self.pool[conf <= np.median(conf)]
        self.ref_sd = float(traffic["scores"][self._items(self.ref_pairs)].std())

    def _items(self, pairs: np.ndarray) -> np.ndarray:
        """Item indices in row order: side a then side b of each pair."""
        a = np.where(self.chosen_is_a[pairs], 2 * pairs, 2 * pairs + 1)
        return np.stack([a, a ^ 1], axis=1).ravel()

    def draw(self, kind: str | None = None, share: float = 1.0) -> np.ndarray:
        """The pairs of one window: all from the pool, or ``share`` of them from the topic's prompts or the pool's
        near-ties (the rest from the whole pool, without repeating a pair)."""
        n = WINDOW // 2
        if kind is None:
            return self.rng.choice(self.pool, n, replace=False)
        special = self.topic_pool if kind == "topic" else self.near_ties
        k = int(round(share * n))
        first = self.rng.choice(special, k, replace=False)
        rest = self.rng.choice(np.setdiff1d(self.pool, first), n - k, replace=False)
        return self.rng.permutation(np.concatenate([first, rest]))

    def sample(self, pairs: np.ndarray, shift_sd: float = 0.0):
        from rlhf_assets.evaluation.drift import Sample

        items = self._items(pairs)
        return Sample(self.t["scores"][items] + shift_sd * self.ref_sd, self.p_a[pairs], self.t["emb"][items],
                      groups=items // 2)  # the prompt: both sides of a pair

    def frame(self, pairs: np.ndarray, shift_sd: float = 0.0):
        import pandas as pd

        items = self._items(pairs)
        data = {"score": self.t["scores"][items] + shift_sd * self.ref_sd, "p_a": np.repeat(self.p_a[pairs], 2)}
        emb = self.t["emb"][items].astype(np.float64)
        data.update({c: emb[:, j] for j, c in enumerate(EMB_COLUMNS)})
        return pd.DataFrame(data)


# Evidently -------------------------------------------------------------------------------------------------------
def import_evidently():
    """Evidently 0.7.23 imports ``pandas.core.dtypes.common.infer_dtype_from_object``, which pandas 3 removed (only
    its column-type test uses it, never the drift code): put a compatible one back before the import."""
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        from pandas.api.types import pandas_dtype

        common.infer_dtype_from_object = lambda dtype: pandas_dtype(dtype).type
    import evidently

    return evidently


class Evidently:
    def __init__(self, reference_frame):
        import_evidently()
        from evidently import DataDefinition, Dataset
        from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

        self.definition = DataDefinition(numerical_columns=["score", "p_a"], embeddings={"prompt": EMB_COLUMNS})
        self.ref_frame = reference_frame
        self.reference = Dataset.from_pandas(reference_frame, data_definition=self.definition)
        # what EmbeddingsDriftMetric.calculate uses when no drift_method is given
        self.embedding_method = model(bootstrap=reference_frame.shape[0] < 1000)

    def check(self, frame) -> dict[str, Any]:
        from evidently import Dataset, Report
        from evidently.presets import DataDriftPreset

        snapshot = Report([DataDriftPreset(columns=["score", "p_a"])]).run(
            Dataset.from_pandas(frame, data_definition=self.definition), self.reference)
        metrics = snapshot.dict()["metrics"]
        share = next(m["value"]["share"] for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
        columns = {}
        for m in metrics:
            if m["metric_name"].startswith("ValueDrift"):
                value, threshold, method = float(m["value"]), m["config"]["threshold"], m["config"]["method"]
                drifted = value < threshold if "p_value" in method else value >= threshold  # a test or a distance
                columns[m["config"]["column"]] = {"value": value, "threshold": threshold, "drifted": bool(drifted)}
        auc, emb_drift, _ = self.embedding_method(frame[EMB_COLUMNS].copy(), self.ref_frame[EMB_COLUMNS].copy())
        dataset_drift = bool(share >= 0.5)
        return {"alarm": dataset_drift or bool(emb_drift), "dataset_drift": dataset_drift,
                "embedding_drift": bool(emb_drift), "embedding_auc": float(auc), "columns": columns}

    def report_embedding_value(self, frame) -> float:
        """The full Report's EmbeddingsDrift value (slow: its t-SNE), to check the direct call against."""
        from evidently import Dataset, Report
        from evidently.metrics import EmbeddingsDrift

        snapshot = Report([EmbeddingsDrift(embeddings_name="prompt")]).run(
            Dataset.from_pandas(frame, data_definition=self.definition), self.reference)
        return float(snapshot.dict()["metrics"][0]["value"])


# one run ---------------------------------------------------------------------------------------------------------
def run_once(traffic: dict, seed: int, windows: int, change_at: int, after: int, settings, use_evidently: bool,
             verify_evidently: bool) -> dict[str, Any]:
    from rlhf_assets.evaluation.drift import calibrate, check

    run = Run(traffic, seed)
    reference = run.sample(run.ref_pairs)
    t0 = time.perf_counter()
    calibration = calibrate(reference, settings)
    calibrate_s = time.perf_counter() - t0
    ev = Evidently(run.frame(run.ref_pairs)) if use_evidently else None
    timings = {"ours": [], "evidently": []}

    def one(pairs: np.ndarray, shift: float = 0.0) -> dict[str, Any]:
        t = time.perf_counter()
        result = check(calibration, reference, run.sample(pairs, shift))
        timings["ours"].append(time.perf_counter() - t)
        out = {"ours": result.alarm, "ours_tests": [x.name for x in result.tests if x.alarm],
               "ours_location": dataclasses.asdict(result.location)}  # for the pooled location rule
        if ev is not None:
            t = time.perf_counter()
            e = ev.check(run.frame(pairs, shift))
            timings["evidently"].append(time.perf_counter() - t)
            out.update(evidently=e["alarm"], evidently_parts=[k for k in ("dataset_drift", "embedding_drift") if e[k]],
                       evidently_columns=[c for c, v in e["columns"].items() if v["drifted"]])
        return out

    base = [run.draw() for _ in range(max(windows, change_at))]
    clean = [one(pairs) for pairs in base]
    scenarios = {"none": clean[:windows]}
    for name in SCENARIOS[1:]:
        drifted = []
        for _ in range(after):
            if name in SHIFTS:
                drifted.append(one(run.draw(), SHIFTS[name]))
            else:
                drifted.append(one(run.draw(*MIXES[name])))
        scenarios[name] = clean[:change_at] + drifted
    verified = None
    if ev is not None and verify_evidently:
        pairs = run.draw("topic")
        frame = run.frame(pairs)
        direct = ev.check(frame)["embedding_auc"]
        verified = {"report_value": ev.report_embedding_value(frame), "direct_value": direct}
    return {"seed": seed, "scenarios": scenarios, "calibrate_s": calibrate_s, "check_s": timings,
            "thresholds": {k: v.threshold for k, v in calibration.tests.items()}, "verified": verified}


# summary ---------------------------------------------------------------------------------------------------------
def _persistent_series(windows: list[dict], key: str, settings) -> list[bool]:
    """The persistence rule over one run's windows: ours with its pooled location rule, Evidently's alarms by
    the vote alone (it gives no location)."""
    from rlhf_assets.evaluation.drift import AlarmHistory, Location, LocationNull

    history = AlarmHistory.for_settings(settings)
    out = []
    for w in windows:
        loc = w.get(f"{key}_location")
        location = None if loc is None else Location(loc["shift"], LocationNull(**loc["null"]), loc["k"])
        out.append(history.update(w[key], location))
    return out


def summarize(runs: list[dict], change_at: int, settings, detectors: list[str]) -> dict[str, Any]:
    from rlhf_assets.evaluation.drift import TESTS

    rules = {"ours": ("ours", True), "evidently": ("evidently", False), "evidently_2of3": ("evidently", True)}
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        row: dict[str, Any] = {}
        for label, (key, persist) in rules.items():
            if key not in detectors:
                continue
            series = []
            for r in runs:
                windows = r["scenarios"][scenario]
                series.append(_persistent_series(windows, key, settings) if persist else [w[key] for w in windows])
            if scenario == "none":
                total = sum(len(s) for s in series)
                alarms = sum(sum(s) for s in series)
                row[label] = {"windows": total, "false_alarms": alarms, "per_100": 100.0 * alarms / total}
            else:
                delays = []
                for s in series:
                    hit = next((i - change_at + 1 for i in range(change_at, len(s)) if s[i]), None)
                    delays.append(hit)
                found = [d for d in delays if d is not None]
                row[label] = {"detected": len(found), "runs": len(delays),
                              "within_3": sum(d <= 3 for d in found),
                              "median_delay": float(np.median(found)) if found else None,
                              "max_delay": max(found) if found else None, "delays": delays}
        if scenario != "none":
            drifted = [w for r in runs for w in r["scenarios"][scenario][change_at:]]
            row["ours_tests_alarming_share"] = {
                t: sum(t in w["ours_tests"] for w in drifted) / len(drifted)
                for t in TESTS}
            if "evidently" in detectors:
                row["evidently_parts_share"] = {
                    part: sum(part in w["evidently_parts"] for w in drifted) / len(drifted)
                    for part in ("dataset_drift", "embedding_drift")}
        out[scenario] = row
    clean = [w for r in runs for w in r["scenarios"]["none"]]
    out["none"]["ours_window_alarms_per_100"] = 100.0 * sum(w["ours"] for w in clean) / len(clean)
    out["none"]["ours_tests_alarming_per_100"] = {
        t: 100.0 * sum(t in w["ours_tests"] for w in clean) / len(clean)
        for t in TESTS}
    if "evidently" in detectors:
        out["none"]["evidently_parts_per_100"] = {
            part: 100.0 * sum(part in w["evidently_parts"] for w in clean) / len(clean)
            for part in ("dataset_drift", "embedding_drift")}
        out["none"]["evidently_columns_drifting_per_100"] = {
            c: 100.0 * sum(c in w["evidently_columns"] for w in clean) / len(clean) for c in ("score", "p_a")}
    return out


def _fmt_delay(d: dict) -> str:
    if d["detected"] == 0:
        return f"missed in all {d['runs']}"
    missed = d["runs"] - d["detected"]
    return (f"median {d['median_delay']:g}, max {d['max_delay']}, ≤3 in {d['within_3']}/{d['runs']}"
            + (f", missed {missed}" if missed else ""))


def format_table(summary: dict) -> str:
    labels = [x for x in ("ours", "evidently", "evidently_2of3") if x in summary["scenarios"]["none"]]
    names = {"ours": "ours (2 of 3)", "evidently": "Evidently (per window)", "evidently_2of3": "Evidently + 2 of 3"}
    lines = [f"{'scenario':14} " + " | ".join(f"{names[x]:38}" for x in labels)]
    none = summary["scenarios"]["none"]
    lines.append(f"{'none':14} " + " | ".join(
        f"{none[x]['per_100']:.2f} false alarms / 100 windows ({none[x]['false_alarms']}/{none[x]['windows']})"
        .ljust(38) for x in labels))
    for scenario in SCENARIOS[1:]:
        row = summary["scenarios"][scenario]
        lines.append(f"{scenario:14} " + " | ".join(f"{_fmt_delay(row[x]):38}" for x in labels))
    return "\n".join(lines)


def main(runs: int, windows: int, change_at: int, after: int, preset: str, null_windows: int | None,
         use_evidently: bool, json_out: bool, verify_evidently: bool = True) -> dict[str, Any]:
    from rlhf_assets.evaluation.drift import DriftSettings

    settings = DriftSettings() if null_windows is None else DriftSettings(null_windows=null_windows)
    traffic = score_traffic(preset)
    detectors = ["ours"] + (["evidently"] if use_evidently else [])
    version = import_evidently().__version__ if use_evidently else None
    results = []
    t0 = time.perf_counter()
    for seed in range(runs):
        results.append(run_once(traffic, seed, windows, change_at, after, settings, use_evidently,
                                verify_evidently=use_evidently and verify_evidently and seed == 0))
        print(f"run {seed + 1}/{runs} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    scen = summarize(results, change_at, settings, detectors)
    ours_ms = [1000 * t for r in results for t in r["check_s"]["ours"]]
    ev_ms = [1000 * t for r in results for t in r["check_s"]["evidently"]]
    delays_ok = all(scen[s]["ours"]["within_3"] == scen[s]["ours"]["runs"] for s in TARGETED)
    summary = {
        "setup": {"preset": traffic["preset"], "artifact": traffic["artifact"], "items": len(traffic["scores"]),
                  "p_a": "calibrated" if traffic["calibrated"] else "uncalibrated Bradley-Terry sigmoid",
                  "topic_pairs": int(traffic["topic"].sum()), "scoring_s": traffic["seconds"],
                  "runs": runs, "windows_without_drift": windows, "change_at": change_at,
                  "drifted_windows": after, "window": WINDOW, "pairs_per_window": WINDOW // 2,
                  "settings": settings.to_dict(), "evidently": version, "cpus": os.cpu_count()},
        "scenarios": scen,
        "timing": {"ours_calibrate_s_mean": float(np.mean([r["calibrate_s"] for r in results])),
                   "ours_check_ms_mean": float(np.mean(ours_ms)), "ours_check_ms_p99": float(np.quantile(ours_ms, .99)),
                   "evidently_check_ms_mean": float(np.mean(ev_ms)) if ev_ms else None},
        "evidently_embedding_check": next((r["verified"] for r in results if r["verified"]), None),
        "targets": {"false_alarms_per_100_at_most_1": scen["none"]["ours"]["per_100"] <= 1.0,
                    "every_shift_detected_within_3": delays_ok},
    }
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        print(f"reward model: {traffic['preset']} preset ({traffic['artifact'][:12]}…), p_a {summary['setup']['p_a']}; "
              f"{runs} runs, windows of {WINDOW} items ({WINDOW // 2} pairs), change at window {change_at}")
        print(format_table(summary))
        print(json.dumps({"timing": summary["timing"], "targets": summary["targets"]}, indent=2))
    return summary


def cli(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="Seeded runs per scenario.")
    p.add_argument("--windows", type=int, default=30, help="Windows without drift per run (scenario none).")
    p.add_argument("--change-at", type=int, default=3, help="Windows before the change in the drift scenarios.")
    p.add_argument("--after", type=int, default=5, help="Drifted windows per run (a detection later is a miss).")
    p.add_argument("--preset", default=None, choices=["tiny", "small"],
                   help="Reward model as bench/serving.py builds it (default small; tiny with --quick).")
    p.add_argument("--null-windows", type=int, default=None, help="Our calibration's null windows (default: ours).")
    p.add_argument("--skip-evidently", action="store_true", help="Ours only.")
    p.add_argument("--quick", action="store_true", help="tiny preset, 3 runs, 8 windows, 20 null windows: a smoke "
                                                        "test.")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.windows, a.after, a.null_windows = 3, 8, 4, a.null_windows or 20
    a.preset = a.preset or ("tiny" if a.quick else "small")
    if a.change_at < 1 or a.after < 1 or a.windows < a.change_at:
        p.error("need --change-at >= 1, --after >= 1 and --windows >= --change-at")
    return main(a.runs, a.windows, a.change_at, a.after, a.preset, a.null_windows, not a.skip_evidently, a.json,
                verify_evidently=not a.quick)


if __name__ == "__main__":
    cli()
