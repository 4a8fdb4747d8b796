"""Supervised fine-tuning: the release's chosen responses teach the base policy to answer; the result is PPO's
starting point and its frozen reference.

Loss: mean negative log-likelihood of the RESPONSE tokens only (the prompt is context, not a target). The data
order of epoch e is a permutation seeded by (seed, e), so a resumed run needs only the step number to continue
exactly where it stopped; the checkpoint holds weights, optimizer, scheduler, RNG state, step and the metric
history, and the final weights of a resumed run are bit-identical to an uninterrupted one on CPU.

On N processes (torchrun, policy/distributed.py) each step's batch is split by rows across the ranks; each rank's
loss is its rows' token NLL sum over the WHOLE batch's token count (times N: DDP averages), so the averaged gradient
is the one-process gradient and the batch size means the same on any N.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from rlhf_assets.checkpoint_mirror import CheckpointMirror
from rlhf_assets.code_version import code_version
from rlhf_assets.lora import add_lora
from rlhf_assets.policy import distributed
from rlhf_assets.policy.base import base_policy
from rlhf_assets.policy.config import SFTConfig
from rlhf_assets.policy.data import collate, encode_prompt, encode_response
from rlhf_assets.policy.model import PolicyModel, response_outputs
from rlhf_assets.policy.ppo_core import masked_mean, token_logprobs
from rlhf_assets.policy.runtime import (
    MetricsLog,
    adamw,
    autocast,
    device_for,
    load_checkpoint,
    make_deterministic,
    save_checkpoint,
    store_policy,
    versions,
    warmup_linear,
)

SFT_KIND = "sft_policy"


@dataclass
class SFTResult:
    artifact_id: str | None  # None on ranks other than 0 (rank 0 stores the artifact)
    artifact_uri: str | None
    artifact_dir: str | None
    metrics: dict[str, float]
    global_step: int
    resumed_from_step: int | None
    tokens_per_s: float
    wall_time_s: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


def encode_examples(tokenizer: Any, rows: Sequence[dict], cfg: SFTConfig) -> tuple[list, list]:
    prompts = [encode_prompt(tokenizer, r["prompt"], cfg.max_prompt_tokens) for r in rows]
    responses = [encode_response(tokenizer, r["response"], cfg.max_response_tokens) for r in rows]
    return prompts, responses


def response_nll(model: PolicyModel, batch, device: torch.device, precision: str,
                 n_tokens: float | None = None) -> torch.Tensor:
    """Mean response-token NLL of ``batch``; with ``n_tokens``, its token sum over that count (these rows' share of
    a larger batch's mean, on one of N processes)."""
    batch = batch.to(device)
    with autocast(device, precision):
        logits, _ = response_outputs(model, batch)
    return -masked_mean(token_logprobs(logits, batch.response_ids), batch.response_mask, n_tokens=n_tokens)


@torch.no_grad()
def mean_nll(model: PolicyModel, prompts: list, responses: list, pad_id: int, device: torch.device,
             precision: str, batch_size: int = 32) -> float:
    """Token-weighted mean response NLL over a set of examples."""
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(prompts), batch_size):
        batch = collate(prompts[i:i + batch_size], responses[i:i + batch_size], pad_id)
        n = float(batch.response_mask.sum())
        total += float(response_nll(model, batch, device, precision)) * n
        count += n
    model.train()
    return total / max(count, 1.0)


def train_sft(config: SFTConfig, rows: Sequence[dict], out_dir: str | Path, *, val_rows: Sequence[dict] = (),
              store_root: str | None = None, dataset_id: str | None = None,
              log: Callable[[str], None] | None = None, checkpoints: CheckpointMirror | None = None) -> SFTResult:
    """Fine-tune ``config.preset``'s base policy on ``rows`` ({"prompt", "response"}) and store the artifact.
    ``checkpoints``: the storage root's mirror of ``out_dir/checkpoints`` (resume on a fresh machine)."""
    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    cfg = config.resolved()
    if not rows:
        raise ValueError("SFT needs at least one (prompt, response) example")
    work = Path(out_dir)
    device = device_for()
    deterministic_before = make_deterministic(cfg.seed, device)
    world, main = distributed.world_size(), distributed.is_main()
    if not main:  # rank 0 first: the small preset converts its base into the store once
        distributed.barrier()
    model, tokenizer, parents = base_policy(cfg, store_root, say)
    if main:
        distributed.barrier()
    if cfg.lora_rank:  # before the optimizer, DDP and any checkpoint restore: they all see the adapters
        add_lora(model.lm, cfg.lora_rank, cfg.lora_alpha, targets=cfg.lora_targets)
    model.to(device).train()
    model.value_head.requires_grad_(False)  # not trained by SFT (and DDP wants every trainable parameter used)
    trainer = distributed.ddp(model)  # the model itself on one process
    pad_id = tokenizer.pad_token_id
    prompts, responses = encode_examples(tokenizer, rows, cfg)
    n = len(rows)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps < 0 else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    optimizer = adamw(model.lm.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = warmup_linear(optimizer, total, cfg.warmup_ratio)

    ckpt_path = work / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt_path, checkpoints)
    start, resumed_from, history, train_time, tokens = 0, None, [], 0.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = resumed_from = int(state["step"])
        history, train_time, tokens = list(state["history"]), float(state["train_time"]), int(state["tokens"])
        say(f"resuming from step {start} ({ckpt_path})")
    metrics_log = MetricsLog(work / "metrics.jsonl", history, write=main)
    say(f"SFT {cfg.preset}: {n} examples, {total} steps of {cfg.batch_size} on {device}"
        + (f" × {world} processes" if world > 1 else ""))

    window: list[float] = []
    for step in range(start, total):
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size].tolist()
        ts = time.perf_counter()
        if world == 1:
            batch = collate([prompts[i] for i in idx], [responses[i] for i in idx], pad_id)
            loss = response_nll(model, batch, device, cfg.precision)
            loss.backward()
            loss_value = loss.item()
        else:  # this rank's rows; their share of the batch's mean (weight 0: a stand-in row, see shard)
            rows, weight = distributed.shard(idx)
            rows = rows.tolist()
            batch = collate([prompts[i] for i in rows], [responses[i] for i in rows], pad_id)
            share = response_nll(trainer, batch, device, cfg.precision,
                                 n_tokens=float(sum(len(responses[i]) for i in idx))) * weight
            (share * world).backward()
            loss_value = float(distributed.all_reduce_sum(share.detach().reshape(1)))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.lm.parameters(), cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - ts
        tokens += sum(len(prompts[i]) + len(responses[i]) for i in idx)  # the batch's, over all ranks
        window.append(loss_value)
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            row = {"step": done, "epoch": epoch, "loss": sum(window) / len(window), "grad_norm": grad_norm,
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / train_time if train_time else 0.0}
            metrics_log.append(row)
            say(f"step {done}/{total} loss {row['loss']:.4f} ({row['tokens_per_s']:.0f} tok/s)")
            window = []
        if done % cfg.checkpoint_every == 0 or done == total:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "step": done,
                "history": metrics_log.history, "train_time": train_time, "tokens": tokens}, checkpoints)

    model.eval()
    if not main:  # rank 0 evaluates and stores; the others wait for it
        distributed.barrier()
        torch.use_deterministic_algorithms(deterministic_before)
        return SFTResult(None, None, None, {}, total, resumed_from, tokens / train_time if train_time else 0.0,
                         round(time.perf_counter() - t0, 3))
    metrics = {"train_loss": metrics_log.history[-1]["loss"] if metrics_log.history else float("nan"),
               "train_nll": mean_nll(model, prompts[:256], responses[:256], pad_id, device, cfg.precision)}
    if val_rows:
        vp, vr = encode_examples(tokenizer, val_rows, cfg)
        metrics["val_nll"] = mean_nll(model, vp, vr, pad_id, device, cfg.precision)
    tokens_per_s = tokens / train_time if train_time else 0.0
    manifest = {
        "kind": SFT_KIND, "stage": "sft", "dataset_id": dataset_id, "code_version": code_version(),
        "config": cfg.to_dict(), "seed": cfg.seed, "metrics": metrics, "parent_ids": parents,
        "data": {"n_train": n, "n_val": len(val_rows)}, "training": {"global_step": total},
        "versions": versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "run": {"wall_time_s": round(time.perf_counter() - t0, 3), "tokens_per_s": round(tokens_per_s, 1),
                "resumed_from_step": resumed_from, "host": platform.node(), "work_dir": str(work)},
    }
    store, ref = store_policy(model, tokenizer, "sft", cfg.to_dict(), manifest, store_root, work)
    say(f"artifact {ref.id} at {ref.uri}")
    distributed.barrier()
    torch.use_deterministic_algorithms(deterministic_before)
    return SFTResult(ref.id, ref.uri, str(store.get(ref.id)), metrics, total, resumed_from, tokens_per_s,
                     round(time.perf_counter() - t0, 3), store.manifest(ref.id))
