"""What SFT and PPO share at run time: device and precision, determinism, atomic resumable checkpoints,
the optimizer and scheduler, and a metrics log."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from rlhf_assets.checkpoint_mirror import CheckpointMirror
from rlhf_assets.policy import distributed
from rlhf_assets.storage import atomic_write_local


def device_for() -> torch.device:
    """CUDA when there is one (under torchrun: this process's GPU, ``LOCAL_RANK``), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked for; a no-op otherwise (fp32)."""
    if precision == "bf16-mixed" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_deterministic(seed: int, device: torch.device) -> bool:
    """Seed everything; on CPU also force deterministic kernels (exact resume and reruns). Returns the previous
    deterministic-algorithms flag, which callers restore when they finish (in-process callers keep theirs)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    return before


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    # foreach=False: the same update order on every run (no multi-tensor fusion differences).
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay,
                             foreach=False)


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(path: Path, state: dict[str, Any], mirror: CheckpointMirror | None = None) -> None:
    """Write atomically (streamed to an fsynced temporary, then renamed): a kill -9 leaves the previous checkpoint
    intact; then, with a ``mirror``, upload it to the storage root. On N processes rank 0 writes it (every rank holds
    the same state) and the others wait at a barrier, so no rank runs ahead of the last checkpoint."""
    if distributed.is_main():
        atomic_write_local(path, lambda fh: torch.save(state, fh))
        if mirror is not None:
            mirror.push([path])
    distributed.barrier()


def load_checkpoint(path: Path, mirror: CheckpointMirror | None = None) -> dict[str, Any] | None:
    """The checkpoint at ``path`` or None; ``weights_only=True``: tensors and plain values only, no pickled code.
    With a ``mirror`` and no checkpoint at ``path``, the last one mirrored to the storage root is downloaded first
    (rank 0, then any rank that still lacks it: another node's disk). On N processes every rank reads it, and all
    must have found the same step (else a clear error: ``--out`` must be on storage every rank sees)."""
    if mirror is not None:
        if distributed.is_main():
            mirror.restore([path])
        distributed.barrier()
        if not distributed.is_main() and not path.exists():
            mirror.restore([path])
    state = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
    distributed.require_same(-1 if state is None else int(state["step"]),
                             f"the checkpoint {path} (--out must be on storage every process sees)")
    return state


class MetricsLog:
    """``metrics.jsonl``: one JSON line per step, rewritten from the checkpoint's history on resume.
    ``history`` is appended to in place (it is the caller's list, saved in its checkpoints). ``write=False`` (ranks
    other than 0): the history is kept, the file left alone."""

    def __init__(self, path: Path, history: list[dict], write: bool = True):
        self.path, self.history, self.write = path, history, write
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in self.history))

    def append(self, row: dict) -> None:
        self.history.append(row)
        if not self.write:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def store_policy(model, tokenizer, stage: str, train_config: dict, manifest: dict, store_root: str | None,
                 work: Path):
    """Save the policy payload into a temporary folder under ``work`` and put it in the artifact store."""
    import tempfile

    from rlhf_assets.policy.artifacts import save_policy
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.storage import storage_from_env

    store = ArtifactStore(storage_from_env(store_root))
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=".export-") as tmp:
        payload = save_policy(model, tokenizer, stage, train_config, Path(tmp) / "payload")
        ref = store.put_dir(payload, kind=manifest["kind"], manifest=manifest)
    return store, ref


def versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
