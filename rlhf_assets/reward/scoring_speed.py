"""How fast a reward model scores: a small measurement (reported by rm_distilled and the cost-fidelity bench, never
asserted), not a load test — bench/serving.py measures the HTTP service."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from rlhf_assets.reward.artifact import RewardScorer


def scoring_speed(scorer: RewardScorer, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 16,
                  repeats: int = 3, threads: int | None = None) -> dict[str, float]:
    """Score the texts ``repeats`` times in batches of ``batch_size`` (after one warm-up batch): per-batch latency
    p50/p99 in ms, items per second, and CPU-seconds per 1,000 items. ``threads`` sets torch's intra-op threads for
    the measurement (restored afterwards)."""
    if not prompts or len(prompts) != len(responses):
        raise ValueError("scoring_speed needs as many prompts as responses, at least one")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        scorer.score(prompts[:batch_size], responses[:batch_size], batch_size)  # warm-up
        latencies: list[float] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(prompts), batch_size):
                t = time.perf_counter()
                scorer.score(prompts[i:i + batch_size], responses[i:i + batch_size], batch_size)
                latencies.append(time.perf_counter() - t)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        torch.set_num_threads(before)
    n = len(prompts) * repeats
    ms = np.array(latencies) * 1000
    return {"batch_size": batch_size, "batch_p50_ms": float(np.percentile(ms, 50)),
            "batch_p99_ms": float(np.percentile(ms, 99)), "items_per_s": n / wall if wall > 0 else float("nan"),
            "cpu_s_per_1k_items": 1000 * cpu / n}
