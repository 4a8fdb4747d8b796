"""Cost versus fidelity of the reward model: presets, LoRA, a distilled student and the student → teacher cascade,
one table from one run.

    python -m bench.cost_fidelity [--quick] [--pairs N] [--json]
    rlhf bench cost-fidelity …

Data: the bundled HH-RLHF harmless pairs (the first ``--pairs``), split by a seeded permutation into train / validation
/ held-out (70 / 10 / 20 %). Every configuration trains on the train pairs in this process (fp32 on CPU, seed 0,
torch on ``THREADS`` threads) and is measured on the same held-out pairs:

  tiny            the random-init 2-layer BERT, full training (Lightning, ``train_reward_model``)
  small           the pretrained all-MiniLM-L6-v2, full fine-tuning (1 epoch)
  small+LoRA      the same backbone with LoRA adapters (rank 8 on query/value; only adapters and head train)
  student         distilled from ``small`` (rlhf_assets/reward/distill.py): its first 2 of 6 layers at full width,
                  teacher-score regression + Bradley–Terry on the train pairs
  cascade         the student scores every pair; pairs whose calibrated P is within ``BAND`` of 0.5 go to ``small``

``--quick`` (the smoke test) puts tiny where small is: tiny, tiny+LoRA, a 1-layer student of tiny, their cascade.

Columns: held-out accuracy; ECE of the probability after Platt calibration on the validation pairs (the cascade's
band is read on that probability); training CPU-seconds of this process (user + system, all threads; the cascade's
is the teacher's plus the student's; GPU-seconds where a GPU would be used — this bench runs on CPU); serving p99 of
one batch of ``BATCH`` texts and texts/s (the cascade: each batch of BATCH/2 pairs through the student, then its
uncertain pairs through the teacher; every model measured in turn within each of ``repeats`` rounds, the median
round reported, so a shared machine's load falls on all alike); accuracy gained per CPU-hour = (accuracy − 0.5) / training CPU-hours.
Figures depend on this machine and its load (printed before and after): compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
THREADS = 2
BATCH = 16
BAND = 0.1
FULL = {"n_pairs": 1000, "max_length": 128, "bench_texts": 64, "repeats": 5, "teacher": "small"}
#: The smoke test: the tiny preset stands in for small (tiny+LoRA, a 1-layer student of tiny, their cascade).
QUICK = {"n_pairs": 64, "max_length": 48, "bench_texts": 16, "repeats": 1, "teacher": "tiny"}
COLUMNS = ("config", "accuracy", "ece", "train_cpu_s", "p99_ms", "items_per_s", "acc_gain_per_cpu_h")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def split(pairs: Sequence[Any], seed: int = SEED) -> tuple[list, list, list]:
    perm = np.random.default_rng(seed).permutation(len(pairs))
    n_train, n_val = int(0.7 * len(pairs)), int(0.1 * len(pairs))
    pick = [pairs[i] for i in perm]
    return pick[:n_train], pick[n_train:n_train + n_val], pick[n_train + n_val:]


def train_rm(cfg, train, val, work: Path):
    """(scorer, training CPU-seconds) of a reward model trained by the project's trainer."""
    from rlhf_assets.reward.artifact import load_reward_model
    from rlhf_assets.reward.data import write_pairs
    from rlhf_assets.reward.train import train_reward_model

    work.mkdir(parents=True, exist_ok=True)
    write_pairs(work / "train.jsonl", train)
    write_pairs(work / "val.jsonl", val)
    t0 = cpu_s()
    result = train_reward_model(cfg, work / "train.jsonl", work / "val.jsonl", work / "run",
                                store_root=str(work / "store"), progress=False)
    spent = cpu_s() - t0
    return load_reward_model(result.artifact_dir), spent


def oriented_p(scorer, pairs, calibrator) -> tuple[np.ndarray, np.ndarray]:
    from rlhf_assets.reward.distill_release import oriented_probabilities

    return oriented_probabilities(scorer, pairs, calibrator, SEED)


def cascade_speed(student, teacher, s_cal, t_cal, pairs, band: float, repeats: int) -> dict[str, float]:
    """Per batch of BATCH/2 pairs: the student scores both sides, the teacher those inside the band."""
    from rlhf_assets.serving.cascade import escalate

    half = BATCH // 2
    latencies, n_texts = [], 0
    t_wall = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(pairs), half):
            chunk = pairs[i:i + half]
            t = time.perf_counter()
            prompts = [p.prompt for p in chunk]
            m = student.score(prompts, [p.chosen for p in chunk], BATCH) - \
                student.score(prompts, [p.rejected for p in chunk], BATCH)
            p = s_cal.predict(m) if s_cal is not None else 1 / (1 + np.exp(-m))
            sent = [c for c, e in zip(chunk, escalate(p, band)) if e]
            if sent:
                teacher.score([c.prompt for c in sent] * 2, [c.chosen for c in sent] + [c.rejected for c in sent],
                              BATCH)
            latencies.append(time.perf_counter() - t)
            n_texts += 2 * len(chunk)
    wall = time.perf_counter() - t_wall
    ms = np.array(latencies) * 1000
    return {"batch_p99_ms": float(np.percentile(ms, 99)), "items_per_s": n_texts / wall}


def round_robin(scorers: dict, bench_args: tuple, cascade, rounds: int) -> dict[str, dict[str, float]]:
    """Per model (and "cascade"): the median over ``rounds`` of its batch p99, texts/s and CPU-s per 1k texts, each
    round measuring every model once, one after the other."""
    from rlhf_assets.reward.scoring_speed import scoring_speed

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*scorers, "cascade"]}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            runs[name].append(scoring_speed(scorer, *bench_args, batch_size=BATCH, repeats=1))
        runs["cascade"].append(cascade())
    return {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()}


def row(name: str, accuracy: float, ece: float, train_cpu: float, speed: dict[str, float], **extra) -> dict:
    hours = train_cpu / 3600
    return {"config": name, "accuracy": accuracy, "ece": ece, "train_cpu_s": train_cpu,
            "p99_ms": speed["batch_p99_ms"], "items_per_s": speed["items_per_s"],
            "acc_gain_per_cpu_h": (accuracy - 0.5) / hours if hours > 0 else float("nan"), **extra}


def main(quick: bool = False, n_pairs: int | None = None, json_out: bool = False) -> dict:
    import torch

    from rlhf_assets.preference.sample_data import load_hh_pairs
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.data import PreferencePair
    from rlhf_assets.reward.distill import DistillSettings, distill, fit_calibrator
    from rlhf_assets.reward.metrics import accuracy, expected_calibration_error
    from rlhf_assets.serving.cascade import evaluate_cascade

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("rlhf_assets.preference.sample_data").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    plan = dict(QUICK if quick else FULL)
    if n_pairs:
        plan["n_pairs"] = n_pairs
    load_before = os.getloadavg()
    pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in load_hh_pairs(limit=plan["n_pairs"])]
    train, val, test = split(pairs)
    texts = test[:plan["bench_texts"]]
    bench_args = ([p.prompt for p in texts], [p.chosen for p in texts])
    L = plan["max_length"]
    common = {"max_length": L, "batch_size": BATCH, "seed": SEED, "precision": "32-true", "accelerator": "cpu",
              "early_stopping_patience": 0}
    big = plan["teacher"]
    configs = {"tiny": RMConfig(preset="tiny", epochs=2, **common)}
    if big != "tiny":
        configs[big] = RMConfig(preset=big, epochs=1, **common)
    configs[f"{big}+LoRA"] = RMConfig(preset=big, epochs=configs[big].epochs, lora_rank=8,
                                      lr=5e-4 if big != "tiny" else None, **common)
    rows, models = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        for name, cfg in configs.items():
            scorer, spent = train_rm(cfg, train, val, Path(tmp) / name.replace("+", "-"))
            cal = fit_calibrator(scorer, val)
            p, y = oriented_p(scorer, test, cal)
            models[name] = (scorer, cal, p, y, spent)
        teacher, t_cal, p_t, y, t_cpu = models[big]
        layers = teacher.net.backbone.config.num_hidden_layers
        student_layers = max(1, layers // 3)
        t0 = cpu_s()
        result = distill(teacher, train, val, DistillSettings(student_layers=student_layers, student_hidden=None,
                                                              epochs=3, lr=1e-4 if big != "tiny" else 1e-3,
                                                              batch_size=BATCH, seed=SEED))
        s_cpu = cpu_s() - t0  # the teacher's scoring of the train texts included
        from rlhf_assets.reward.artifact import RewardScorer

        student = RewardScorer(result.student.eval(), teacher.tokenizer, teacher.max_length)
        p_s, _ = oriented_p(student, test, result.calibrator)
        # Serving speed, every model in turn within each round, so the load of a shared machine falls on all alike
        speed = round_robin({**{n: m[0] for n, m in models.items()}, "student": student}, bench_args,
                            lambda: cascade_speed(student, teacher, result.calibrator, t_cal,
                                                  test[:plan["bench_texts"]], BAND, 1), plan["repeats"])
        for name, (_, _, p, _, spent) in models.items():
            rows.append(row(name, accuracy(p, y), expected_calibration_error(p, y), spent, speed[name]))
        rows.append(row(f"student({student_layers}/{layers} layers of {big})", accuracy(p_s, y),
                        expected_calibration_error(p_s, y), s_cpu, speed["student"]))
        cascade = evaluate_cascade(p_s, p_t, y, BAND, speed["student"]["cpu_s_per_1k_items"],
                                   speed[big]["cpu_s_per_1k_items"])
        rows.append(row(f"cascade(student→{big}, band {BAND})", cascade["accuracy_cascade"], cascade["ece_cascade"],
                        t_cpu + s_cpu, speed["cascade"], share_escalated=cascade["share_escalated"]))
    out = {"rows": rows, "n_train": len(train), "n_val": len(val), "n_test": len(test), "max_length": L,
           "threads": THREADS, "device": "cpu", "load_before": load_before, "load_after": os.getloadavg(),
           "cascade": cascade, "quick": quick}
    print(format_table(out))
    if json_out:
        print(json.dumps(out, default=float))
    return out


def format_table(out: dict) -> str:
    head = f"{'config':<36}{'acc':>7}{'ECE':>7}{'train CPU-s':>12}{'p99 ms':>9}{'texts/s':>9}{'acc gain/CPU-h':>16}"
    lines = [f"cost vs fidelity: {out['n_train']} train / {out['n_val']} val / {out['n_test']} held-out HH-RLHF pairs, "
             f"max length {out['max_length']}, {out['threads']} threads, {out['device']}; load "
             f"{out['load_before'][0]:.1f} → {out['load_after'][0]:.1f}", head, "-" * len(head)]
    for r in out["rows"]:
        lines.append(f"{r['config']:<36}{r['accuracy']:>7.3f}{r['ece']:>7.3f}{r['train_cpu_s']:>12.1f}"
                     f"{r['p99_ms']:>9.1f}{r['items_per_s']:>9.1f}{r['acc_gain_per_cpu_h']:>16.3f}")
    c = out["cascade"]
    lines.append(f"cascade: {c['share_escalated']:.1%} of held-out pairs escalated to the teacher; accuracy student "
                 f"{c['accuracy_student']:.3f} / teacher {c['accuracy_teacher']:.3f} / cascade "
                 f"{c['accuracy_cascade']:.3f}; CPU per item {c['cost_vs_teacher']:.2f}× the teacher's")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> dict:
    """Command-line entry point (also used by `rlhf bench cost-fidelity`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cost_fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test (64 pairs, max length 48; meaningless "
                                                            "figures)")
    parser.add_argument("--pairs", type=int, default=None, help=f"HH-RLHF pairs to use (default {FULL['n_pairs']})")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON object, last")
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 20:
        parser.error("--pairs must be at least 20")
    return main(quick=args.quick, n_pairs=args.pairs, json_out=args.json)


if __name__ == "__main__":
    cli()
