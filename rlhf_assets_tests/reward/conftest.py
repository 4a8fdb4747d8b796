"""Tiny synthetic preference data: the chosen response says "good", the rejected one "bad"."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

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


@pytest.fixture
def pairs_files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(16, seed=2))
    return train, val
