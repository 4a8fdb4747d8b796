"""Tiny learnable RLHF set-up shared by the policy tests: prompts whose good answers are polite and helpful and
whose bad answers are rude; a tiny reward model that has learned the difference; a tiny SFT policy trained on a
MIX of both kinds of answer, so its samples vary and PPO has something to improve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def learnable_pairs(n: int = 240, start: int = 0) -> list[dict]:
    return [{"prompt": f"Human: question number {k}?\n\nAssistant:",
             "chosen": f"sure, here is a helpful answer about topic {k % 17}",
             "rejected": f"no, go away, that is a stupid question about topic {k % 13}"} for k in range(start, start + n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def policy_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf_assets.policy.entrypoint", *args]


#: A PPO run that finishes in seconds on one CPU thread.
TINY_PPO = {"steps": 8, "rollout_prompts": 16, "minibatch_size": 8, "micro_batch_size": 8, "max_new_tokens": 12,
            "max_prompt_tokens": 24, "eval_every": 2, "n_eval_prompts": 16, "lr": 1e-3, "ppo_epochs": 2}


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """(store root, reward-model artifact dir, SFT artifact dir, train prompts, held-out prompts, sft rows)."""
    import torch

    from rlhf_assets.policy.config import SFTConfig
    from rlhf_assets.policy.sft import train_sft
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.train import train_reward_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("policy")
    store = str(root / "store")
    pairs = learnable_pairs(240)
    rm = train_reward_model(RMConfig(preset="tiny", max_length=48, batch_size=16, epochs=4, lr=3e-3),
                           write_jsonl(root / "train.jsonl", pairs[:200]), write_jsonl(root / "val.jsonl", pairs[200:]),
                           root / "rm", store_root=store, progress=False)
    sft_rows = [{"prompt": p["prompt"], "response": p["chosen"] if i % 2 else p["rejected"]}
                for i, p in enumerate(pairs)]
    sft = train_sft(SFTConfig(epochs=3, max_prompt_tokens=24, max_response_tokens=16), sft_rows, root / "sft",
                    store_root=store)
    torch.set_num_threads(threads)
    held = [p["prompt"] for p in learnable_pairs(32, start=1000)]
    return {"store": store, "rm_dir": rm.artifact_dir, "rm_id": rm.artifact_id, "sft_dir": sft.artifact_dir,
            "sft_id": sft.artifact_id, "prompts": [p["prompt"] for p in pairs], "eval_prompts": held,
            "sft_rows": sft_rows, "root": root, "rm_val_accuracy": rm.metrics["val_accuracy"]}
