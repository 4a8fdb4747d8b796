"""Tiny synthetic preference data (the chosen response says "good", the rejected one "bad") and test helpers."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOPICS = ["the weather", "a recipe", "my code", "the movie", "this book", "the trip", "a poem", "the game",
          "our plan", "the garden"]
FILLER = ["it is", "i think it is", "honestly it is", "overall it seems", "to me it looks", "in short it is"]


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        f1, f2 = rng.choice(FILLER), rng.choice(FILLER)
        rows.append({"prompt": f"what do you think about {topic}? ({i})",
                     "chosen": f"{f1} good , {topic} .", "rejected": f"{f2} bad , {topic} ."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for entry-point subprocesses: offline, one intra-op thread per process (on a busy 2-core
    machine two OpenMP threads per process spin against each other and a step takes 50x longer)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                        "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "PL_GLOBAL_SEED")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def entrypoint_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf_assets.reward.entrypoint", *args]


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch single-threaded in these tests (see subprocess_env), restoring the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def pairs_files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(16, seed=2))
    return train, val
