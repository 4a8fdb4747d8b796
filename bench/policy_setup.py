"""What the policy benchmarks (bench/overoptimization.py, bench/ppo_stability.py) share: the bundled HH-RLHF data,
tiny reward models and a tiny SFT policy trained in spawned child processes, and a PPO run in a child.

Every trainer runs in its own spawned process with ONE torch thread (``OMP_NUM_THREADS=1`` in the environment it
inherits, ``torch.set_num_threads(1)`` inside), so two children use the two cores of a small machine and nothing
oversubscribes them. Progress goes to stderr; figures come back as plain dicts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "GX_ANALYTICS_ENABLED": "false"}


def child_env() -> None:
    """Set (in this process, inherited by spawned children) one thread per process and offline loading."""
    os.environ.update(_ENV)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _child_init() -> None:
    """First thing in a spawned child: one torch thread, quiet libraries (nothing in-process: see run_all)."""
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return
    child_env()
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "rlhf_assets.preference.sample_data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def pool(workers: int) -> ProcessPoolExecutor:
    """Spawned worker processes (a fresh interpreter each: no state leaks between runs) that exit with us."""
    from bench.children import child_pool

    child_env()
    return child_pool(workers)


def in_child(fn: Callable, *args: Any) -> Any:
    with pool(1) as p:
        return p.submit(fn, *args).result()


@contextlib.contextmanager
def _one_thread_here():
    """In-process runs: one torch thread and torch's determinism flags restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])


def run_all(calls: Sequence[tuple], workers: int = 2, in_process: bool = False) -> list:
    """``[fn(*args) for fn, *args in calls]``: each call in a spawned child, ``workers`` at a time; or, with
    ``in_process`` (the --quick smoke tests: a spawned child costs seconds of imports), one after another here."""
    if in_process:
        with _one_thread_here():
            return [fn(*args) for fn, *args in calls]
    with pool(workers) as p:
        futures = [p.submit(fn, *args) for fn, *args in calls]
        return [f.result() for f in futures]


# data -------------------------------------------------------------------------------------------------------------


def hh_split(seed: int = 0, holdout_fraction: float = 0.2,
             limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """The bundled HH-RLHF harmless pairs, split like bench/reward.py: a ``default_rng(seed)`` permutation, the
    first 80% train, the rest held out."""
    from rlhf_assets.preference.sample_data import load_hh_pairs

    logging.getLogger("rlhf_assets.preference.sample_data").setLevel(logging.ERROR)  # the 5 fallback rows
    pairs = load_hh_pairs(limit=limit)
    n_held = int(round(holdout_fraction * len(pairs)))
    perm = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in perm[:len(pairs) - n_held]], [pairs[i] for i in perm[len(pairs) - n_held:]]


def write_pairs(path: Path, pairs: Sequence[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}) + "\n")
    return str(path)


# children ---------------------------------------------------------------------------------------------------------


def train_rm_child(tag: str, rm_kwargs: dict, train_path: str, val_path: str, heldout_path: str, work: str,
                   store: str) -> dict:
    """Train a reward model (``RMConfig(**rm_kwargs)``) and measure its accuracy on the held-out pairs."""
    _child_init()
    from rlhf_assets.reward.artifact import load_reward_model
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.evaluate import score_pairs
    from rlhf_assets.reward.train import train_reward_model

    t0 = time.perf_counter()
    say(f"[{tag}] training the reward model ({rm_kwargs})")
    r = train_reward_model(RMConfig(**rm_kwargs), train_path, val_path, work, store_root=store, progress=False)
    margins = score_pairs(load_reward_model(r.artifact_dir), heldout_path)
    acc = float(np.mean(margins > 0) + 0.5 * np.mean(margins == 0))
    wall = time.perf_counter() - t0
    say(f"[{tag}] done in {wall:.0f} s: {r.truncation['train']['n_pairs']} pairs, {r.global_step} steps, "
        f"held-out accuracy {acc:.3f}")
    return {"artifact_dir": r.artifact_dir, "artifact_id": r.artifact_id, "n_pairs": r.truncation["train"]["n_pairs"],
            "global_step": r.global_step, "heldout_accuracy": acc, "heldout_n": int(margins.size),
            "train_accuracy": float(r.metrics.get("train_accuracy", float("nan"))), "wall_s": wall,
            "tokens_per_s": float(r.tokens_per_s)}


def train_sft_child(tag: str, sft_kwargs: dict, rows: list[dict], work: str, store: str) -> dict:
    """Fine-tune the tiny policy on ``rows`` ({prompt, response})."""
    _child_init()
    from rlhf_assets.policy.config import SFTConfig
    from rlhf_assets.policy.sft import train_sft

    t0 = time.perf_counter()
    say(f"[{tag}] SFT on {len(rows)} chosen responses ({sft_kwargs})")
    r = train_sft(SFTConfig(**sft_kwargs), rows, work, store_root=store)
    wall = time.perf_counter() - t0
    say(f"[{tag}] done in {wall:.0f} s: train NLL {r.metrics['train_nll']:.3f}")
    return {"artifact_dir": r.artifact_dir, "artifact_id": r.artifact_id, "train_nll": r.metrics["train_nll"],
            "global_step": r.global_step, "tokens_per_s": r.tokens_per_s, "wall_s": wall}


def rm_then_sft_child(rm_args: tuple, sft_args: tuple) -> tuple[dict, dict]:
    """One child, two trainers in a row (keeps a second core free for a longer trainer)."""
    return train_rm_child(*rm_args), train_sft_child(*sft_args)


def ppo_child(tag: str, ppo_kwargs: dict, sft_dir: str, rm_dir: str, prompts: list[str], eval_prompts: list[str],
              work: str, gold_dir: str | None = None, verbose: bool = False, length_pairs: list[dict] | None = None
              ) -> dict:
    """One PPO run (``train_ppo(..., store=False)``); with ``gold_dir`` every held-out evaluation is also scored by
    that reward model (``extra_scorers={"gold": ...}``), its per-response scores kept for standard errors, and the
    share of its texts that are degenerate (fewer than 3 words or a repetition loop: evaluation/adversarial_probes.py
    on words) recorded as ``degenerate_text_share``. ``length_pairs``: the validation pairs a length-debiased
    reward (``length_debias``) is fitted on."""
    _child_init()
    from rlhf_assets.policy.config import PPOConfig
    from rlhf_assets.policy.ppo import train_ppo

    extra: dict[str, Callable] = {}
    gold_scores: list[list[float]] = []
    degenerate: list[float] = []
    if gold_dir is not None:
        from rlhf_assets.reward.artifact import load_reward_model

        gold = load_reward_model(gold_dir)

        from rlhf_assets.evaluation.adversarial_probes import degenerate_reasons

        def gold_scorer(p, texts):
            s = gold.score(list(p), list(texts))
            gold_scores.append([float(x) for x in s])
            degenerate.append(float(np.mean([bool(degenerate_reasons(t.split(), True, min_tokens=3, max_run=4))
                                             for t in texts])) if texts else float("nan"))
            return s

        extra["gold"] = gold_scorer

    def log(msg: str) -> None:
        if verbose or not msg.startswith("step "):
            say(f"[{tag}] {msg}")

    t0 = time.perf_counter()
    r = train_ppo(PPOConfig(**ppo_kwargs), sft_dir, rm_dir, prompts, eval_prompts, work, extra_scorers=extra,
                  log=log, store=False, length_pairs=length_pairs or ())
    wall = time.perf_counter() - t0
    evals = [dict(e) for e in r.evals]
    for e, s, d in zip(evals, gold_scores, degenerate):
        e["gold_se"] = float(np.std(s, ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan")
        e["degenerate_text_share"] = d
    selected = {k: v for k, v in r.selected.items() if isinstance(v, (int, float))}
    return {"history": r.history, "evals": evals, "events": r.events, "stop_reason": r.stop_reason,
            "selected_step": r.selected_step, "selected": selected,
            "rollout_tokens_per_s": float(r.rollout_tokens_per_s), "train_tokens_per_s": float(r.train_tokens_per_s),
            "wall_s": wall, "config": PPOConfig(**ppo_kwargs).resolved().to_dict()}
