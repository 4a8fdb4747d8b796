"""A store with a tiny reference policy, the same policy pushed far from it (Gaussian noise on its weights), a tiny
reward model and calibration, releases that record them as deployment_decision does, and a real
`rlhf serve-policy` process on a free loopback port."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.storage import Storage
from rlhf_assets_tests.serving.service_support import TOKEN, Server, make_store, serve_env
from rlhf_assets_tests.support import start_on_loopback

#: The sampling settings the policies record (train_config), as PPO's artifacts do.
SAMPLING = {"temperature": 1.0, "max_new_tokens": 12, "max_prompt_tokens": 24}
DRIFTED, CLEAN = "r20250601-2359", "r20250602-2359"


@dataclass
class PolicyStore:
    root: Path
    reference: str      # the frozen SFT reference
    drifted: str        # the reference + noise: far from it
    rm: str
    calibration: str

    def artifacts(self, policy: str) -> dict[str, str]:
        return {"policy": policy, "sft_policy": self.reference, "reward_model": self.rm,
                "calibration": self.calibration}

    def promote(self, release: str, policy: str, alias: str = "production", share: float | None = None) -> None:
        Registry(Storage(str(self.root))).set_alias(
            alias, release, self.artifacts(policy), action="canary" if alias == "canary" else "promote",
            reason="test", actor="test", share=share)


def make_policy_store(root: Path, noise: float = 0.5) -> PolicyStore:
    from rlhf_assets.policy.artifacts import save_policy
    from rlhf_assets.policy.model import PolicyModel, tiny_lm, tiny_tokenizer

    rm_store = make_store(root)
    store = ArtifactStore(rm_store.storage)
    tok = tiny_tokenizer()
    model = PolicyModel(tiny_lm(tok, hidden=32, layers=1, seed=0))
    ids = []
    with tempfile.TemporaryDirectory() as d:
        save_policy(model, tok, "sft", SAMPLING, Path(d) / "sft")
        ids.append(store.put_dir(Path(d) / "sft", kind="sft_policy", manifest={"kind": "sft_policy"}).id)
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in model.lm.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen))
        save_policy(model, tok, "ppo", SAMPLING, Path(d) / "ppo")
        ids.append(store.put_dir(Path(d) / "ppo", kind="ppo_policy",
                                 manifest={"kind": "ppo_policy", "parent_ids": [ids[0]]}).id)
    return PolicyStore(Path(root), ids[0], ids[1], rm_store.rm[0], rm_store.calibration)


def start_policy_server(root: Path, *args: str, token: str | None = TOKEN, env: dict | None = None) -> Server:
    """`python -m rlhf_assets.policy_serving.server --port 0 …` against the store; waits for /readyz."""
    t0 = time.monotonic()
    process, url = start_on_loopback("rlhf_assets.policy_serving.server", "--reload-interval-s", "0.5",
                                     "--log-flush-s", "0.5", *args,
                                     env=serve_env(token, RLHF_STORAGE_ROOT=str(root), **(env or {})),
                                     ready_path="/readyz", ready_timeout_s=90, what="the policy server")
    return Server(process, url, time.monotonic() - t0)
