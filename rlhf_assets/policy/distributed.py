"""The policy on N processes: torch.distributed from torchrun's environment, and the few collectives SFT and PPO use.

    torchrun --nproc-per-node N -m rlhf_assets.policy.entrypoint ppo ...     (the same flags as one process)

:func:`process_group` initialises the default group from torchrun's variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``; gloo on CPU, nccl on CUDA, one GPU per ``LOCAL_RANK``) and is a no-op when
``WORLD_SIZE`` is absent, so one process runs exactly the code it ran before. Every helper below is the identity
on one process.

How N processes compute what one computes (the trainers arrange it; this module only moves tensors):

- work is split by rows of the GLOBAL batch (:func:`shard`): the rollout's prompts, the SFT batch, each PPO
  micro-batch and the SFT-mix examples; losses are token sums divided by the global token count, scaled by N
  because DDP averages gradients (so the averaged gradient is the one-process gradient);
- statistics that steer training (the KL the controller and the budget see, reward normalization, advantage
  whitening, logged losses) are computed over all ranks' rows — the rollout is shared (:func:`all_gather_rows`)
  and scalars are all-reduced as sums, never averaged averages;
- randomness is a function of (seed, step, prompt position) or of a generator every rank advances identically, so
  no rank's stream depends on N;
- rank 0 alone writes checkpoints, metrics and the artifact; the others wait at a barrier. A checkpoint holds no
  rank or N, so any N resumes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """The default process group for the duration of a training command (torchrun's env:// rendezvous)."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(rows: torch.Tensor | Sequence[int], world: int | None = None,
          this_rank: int | None = None) -> tuple[torch.Tensor, float]:
    """This rank's contiguous share of a global set of rows, and the weight of its contribution (0 when the rows are
    fewer than the ranks and this one got none: it then runs the first row with weight 0, so every rank still takes
    part in DDP's gradient all-reduce). ``world``/``this_rank`` default to this process's."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    world = world_size() if world is None else world
    mine = torch.tensor_split(rows, world)[rank() if this_rank is None else this_rank]
    if mine.numel() == 0:
        return rows[:1], 0.0
    return mine, 1.0


def require_equal_shares(n: int, what: str, world: int | None = None) -> None:
    """A clear error when ``n`` rows cannot be split equally over the processes."""
    world = world_size() if world is None else world
    if n % world:
        raise ValueError(f"{what}={n} must be a multiple of the number of processes ({world}): each process takes "
                         "an equal share")


def ddp(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel (gradients averaged over ranks) on N processes, else itself.
    ``broadcast_buffers=False``: the buffers (rotary frequencies) are constants, and broadcasting them at every
    forward would make a forward a collective — ranks run different numbers of forwards without gradient sync."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def no_sync(model: torch.nn.Module, skip: bool):
    """Gradient accumulation without DDP's all-reduce (``skip``); the next synced backward reduces the sum."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (float64, so sums of partial means lose nothing)."""
    if not active():
        return values
    out = values.detach().to(torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _device() -> torch.device:
    """Where this group's collectives take tensors (nccl: this process's GPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_max(value: int, device: torch.device | None = None) -> int:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device or _device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def require_same(value: int, what: str) -> None:
    """A clear error (on every rank) unless every rank holds the same ``value``."""
    if active() and all_reduce_max(value) != -all_reduce_max(-value):
        raise ValueError(f"the processes disagree on {what}")


def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (same shape on every rank: pad before calling)."""
    if not active():
        return local
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts, 0)
