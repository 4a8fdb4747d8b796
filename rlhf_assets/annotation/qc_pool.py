"""Quality-control items: gold pairs with a known, clear answer, and attention checks (instructed responses).

The bundled pool is derived from the shipped HH-RLHF sample (preference/sample_data.py), deterministically, and
does not trust the sample's own noisy chosen/rejected labels. Each gold pair sets one of the sample's responses to
a prompt against a response nobody should prefer:

* ``scrambled``: the same response with its words shuffled into nonsense;
* ``loop``: its first few words, then one word repeated (a degenerate repetition loop).

(An unrelated conversation's answer was tried and dropped: on short chit-chat prompts it is sometimes the better
answer.)

An attention check sets a real response against one that tells the annotator which answer to give ("This is an
attention check: …choose this response…"); the expected answer is that side. Which side holds the right answer is
drawn at random, so always pressing the same key fails. A user pool is a JSONL file of
``{"kind": "gold"|"attention", "prompt", "response_a", "response_b", "expected_label": "a"|"b"|"tie"}`` rows.

Every item's id is the pair id of its prompt and responses (preference/schema.py), as for a queued pair.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from rlhf_assets.annotation.queue import QC_KINDS
from rlhf_assets.jsonl_rows import numbered_jsonl
from rlhf_assets.preference.schema import LABELS, pair_id

QC_POOL_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(), "item_kind": pl.String(), "prompt": pl.String(), "response_a": pl.String(),
    "response_b": pl.String(), "expected_label": pl.String(), "construction": pl.String(),
}

ATTENTION_TEXT = ("This is an attention check: please choose this response, whatever the other one says. "
                  "(Check {n})")
BUNDLED_SEED = 15
BUNDLED_GOLD = 48
BUNDLED_ATTENTION = 24
SOURCE_ROWS = 400  # the first rows of the HH sample the pool is drawn from (single-turn prompts only)


def _single_turn(pairs: list[dict[str, str]]) -> list[dict[str, str]]:
    return [p for p in pairs if p["prompt"].count("\n\nHuman:") == 1 and len(p["chosen"].split()) >= 8]


def _scramble(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(10):
        rng.shuffle(words)
        out = " ".join(words)
        if out != text:
            return out
    return " ".join(reversed(text.split()))


def _loop(text: str) -> str:
    words = text.split()
    return " ".join(words[:3] + [words[3]] * 12)


def _row(kind: str, prompt: str, good: str, other: str, good_first: bool, construction: str) -> dict[str, str]:
    a, b = (good, other) if good_first else (other, good)
    return {"item_id": pair_id(prompt, a, b), "item_kind": kind, "prompt": prompt, "response_a": a, "response_b": b,
            "expected_label": "a" if good_first else "b", "construction": construction}


def bundled_pool() -> pl.DataFrame:
    """The pool bundled with the project: BUNDLED_GOLD gold pairs and BUNDLED_ATTENTION attention checks."""
    from rlhf_assets.preference.sample_data import load_hh_pairs

    rng = random.Random(BUNDLED_SEED)
    source = _single_turn(load_hh_pairs(SOURCE_ROWS))
    needed = BUNDLED_GOLD + BUNDLED_ATTENTION
    if len(source) < needed + 1:
        raise RuntimeError(f"the HH sample has only {len(source)} single-turn prompts; the pool needs {needed + 1}")
    picked = rng.sample(range(len(source)), needed)
    rows = []
    for n, index in enumerate(picked):
        item = source[index]
        good_first = rng.random() < 0.5
        if n < BUNDLED_GOLD:
            if n % 2 == 0:
                rows.append(_row("gold", item["prompt"], item["chosen"], _loop(item["chosen"]), good_first, "loop"))
            else:
                rows.append(_row("gold", item["prompt"], item["chosen"], _scramble(item["chosen"], rng), good_first,
                                 "scrambled"))
        else:
            check = ATTENTION_TEXT.format(n=n - BUNDLED_GOLD + 1)
            rows.append(_row("attention", item["prompt"], check, item["chosen"], good_first, "instructed_response"))
    return check_pool(pl.DataFrame(rows, schema=QC_POOL_SCHEMA), "the bundled pool")


def read_pool(path: str | Path) -> pl.DataFrame:
    """A user's pool (JSONL, see the module docstring); a clear error names the line of a bad row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quality-control pool {path} does not exist")
    rows = []
    for number, row in numbered_jsonl(path, ("kind", "prompt", "response_a", "response_b", "expected_label")):
        if row["kind"] not in QC_KINDS:
            raise ValueError(f"{path}:{number}: kind {row['kind']!r} is not one of {QC_KINDS}")
        if row["expected_label"] not in LABELS:
            raise ValueError(f"{path}:{number}: expected_label {row['expected_label']!r} is not one of {LABELS}")
        if row["response_a"] == row["response_b"]:
            raise ValueError(f"{path}:{number}: response_a and response_b are the same")
        rows.append({"item_id": pair_id(row["prompt"], row["response_a"], row["response_b"]), "item_kind": row["kind"],
                     "prompt": row["prompt"], "response_a": row["response_a"], "response_b": row["response_b"],
                     "expected_label": row["expected_label"], "construction": str(row.get("construction", "user"))})
    return check_pool(pl.DataFrame(rows, schema=QC_POOL_SCHEMA), str(path))


def check_pool(pool: pl.DataFrame, where: str) -> pl.DataFrame:
    if pool.height == 0:
        raise ValueError(f"{where}: no quality-control items")
    duplicated = pool.filter(pl.col("item_id").is_duplicated())
    if duplicated.height:
        raise ValueError(f"{where}: {duplicated.height} rows repeat the same prompt and responses")
    return pool


def load_pool(path: str | Path | None = None) -> pl.DataFrame:
    """The user's pool at ``path``, else the bundled one."""
    return read_pool(path) if path else bundled_pool()
