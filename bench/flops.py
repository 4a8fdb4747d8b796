"""The machine's measured fp32 matmul peak, the yardstick for "achieved FLOP/s as a fraction of peak".

    python -m bench.flops [--n 2048] [--repeats 10] [--json]

Best of ``repeats`` timed ``torch.mm`` of two n x n fp32 matrices (2 n^3 floating-point operations each) after
``warmup`` untimed ones, with torch's default intra-op thread count (the same the trainers get). On a shared machine
the best run is the one least disturbed by other work, so it is the closest to the true peak.

Training FLOP/s are estimated with the usual "model FLOPs" rule: 6 x N x tokens per training pass (2 N for the
forward, 4 N for the backward), with N the parameters that do matmul work per token: every parameter except
embedding tables (a lookup does no arithmetic). Attention-score FLOPs and the forward recomputed by gradient
checkpointing are NOT counted, so a run with checkpointing on does more work than it is credited with.
"""

from __future__ import annotations

import argparse
import json
import time


def fp32_matmul_peak(n: int = 2048, repeats: int = 10, warmup: int = 2) -> dict:
    """{"flops_per_s", "gflops", "best_s", "median_s", "n", "repeats", "threads"} of fp32 n x n @ n x n."""
    import torch

    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float32)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32)
    out = torch.empty(n, n, dtype=torch.float32)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    times.sort()
    best = times[0]
    flops = 2.0 * n ** 3 / best
    return {"flops_per_s": flops, "gflops": flops / 1e9, "best_s": best, "median_s": times[len(times) // 2],
            "n": n, "repeats": repeats, "threads": torch.get_num_threads()}


def non_embedding_parameters(model) -> tuple[int, int]:
    """(all parameters, parameters outside ``nn.Embedding`` modules) of a torch module."""
    from torch import nn

    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False))
    return total, total - emb


def training_flops(n_params: int, tokens: int) -> float:
    """Model FLOPs of one training pass over ``tokens`` tokens: 6 x N x tokens."""
    return 6.0 * n_params * tokens


def main(n: int = 2048, repeats: int = 10, json_out: bool = False) -> dict:
    result = fp32_matmul_peak(n, repeats)
    print(f"fp32 matmul peak: {result['gflops']:.1f} GFLOP/s (best of {repeats} {n}x{n} @ {n}x{n}, "
          f"{result['threads']} threads; median {2 * n ** 3 / result['median_s'] / 1e9:.1f} GFLOP/s)")
    if json_out:
        print(json.dumps(result, indent=2))
    return result


def cli(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return main(args.n, args.repeats, args.json)


if __name__ == "__main__":
    cli()
