"""Reward-model artifacts on disk: save and load (safetensors only), and the scorer they load into.

Artifact payload (what :func:`save_reward_model` writes; the registry adds ``manifest.json``):

    model.safetensors      RewardNet state (``backbone.*``, ``head.*``) — safetensors, never pickle
    config.json            {"format", "kind", "rm_config", "backbone_config"}
    tokenizer/             the tokenizer's own files (tokenizer.json, tokenizer_config.json, …)

:func:`load_reward_model` rebuilds the network from config.json, loads the weights and the tokenizer offline, and
returns a :class:`RewardScorer`. No Lightning import here, so scoring and serving start fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_assets.artifact_payload import (
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    check_weights_match,
    read_config,
    write_config_and_tokenizer,
)
from rlhf_assets.hf_offline import load_tokenizer, set_offline
from rlhf_assets.lora import has_lora, merged
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.data import PairCollator, PairEncoder
from rlhf_assets.reward.network import RewardNet, backbone_from_config

ARTIFACT_FORMAT = "rlhf_assets.reward_model/v1"


def save_reward_model(net: RewardNet, tokenizer: Any, config: RMConfig, out_dir: str | Path) -> Path:
    """Write the artifact payload (weights, config, tokenizer) into ``out_dir``."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = net.to("cpu")
    if has_lora(net.backbone):  # LoRA: stored merged, so it loads and serves like any other reward model
        plain = RewardNet(merged(net.backbone), net.kind)
        plain.head.load_state_dict(net.head.state_dict())
        net = plain
    net_cpu = net
    # One metadata key only: safetensors writes a multi-key metadata map in hash order (not byte-stable).
    save_model(net_cpu, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    backbone_config = net.backbone.config.to_dict()
    doc = {"format": ARTIFACT_FORMAT, "kind": net.kind, "rm_config": config.to_dict(),
           "backbone_config": backbone_config}
    write_config_and_tokenizer(out, doc, tokenizer)
    return out


class RewardScorer:
    """Scores (prompt, response) texts with a RewardNet; tokenisation identical to training."""

    def __init__(self, net: RewardNet, tokenizer: Any, max_length: int, device: str | torch.device | None = None):
        self.net = net
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.encoder = PairEncoder(tokenizer, self.max_length, net.kind)
        self.collator = PairCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                     getattr(tokenizer, "padding_side", "right") or "right")
        self.device = torch.device(device) if device is not None else next(net.parameters()).device

    @property
    def kind(self) -> str:
        return self.net.kind

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One reward per (prompt, response); prompts may be empty strings."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        was_training = self.net.training
        self.net.eval()
        seqs = [self.encoder.encode(p, r) for p, r in zip(prompts, responses)]
        order = np.argsort([-len(s.input_ids) for s in seqs], kind="stable")  # little padding per batch
        out = np.empty(len(seqs), dtype=np.float64)
        try:
            for i in range(0, len(seqs), batch_size):
                idx = order[i:i + batch_size]
                batch = self._collate([seqs[j] for j in idx])
                rewards = self.net(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                                   batch["token_type_ids"].to(self.device))
                out[idx] = rewards.double().cpu().numpy()
        finally:
            self.net.train(was_training)
        return out

    def _collate(self, seqs: list) -> dict[str, torch.Tensor]:
        return self.collator.pad(seqs)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return self.score(prompts, responses, batch_size)


def load_reward_model(artifact_dir: str | Path, device: str | torch.device = "cpu") -> RewardScorer:
    """A scorer from an artifact directory (safetensors + config.json + tokenizer/), entirely offline."""
    from safetensors.torch import load_model
    from transformers import AutoConfig

    set_offline()
    d, doc = read_config(artifact_dir, ARTIFACT_FORMAT, "reward-model")
    rm_config = RMConfig.from_dict({k: v for k, v in doc["rm_config"].items() if k in RMConfig.field_names()})
    bcfg = dict(doc["backbone_config"])
    backbone_config = AutoConfig.for_model(bcfg.pop("model_type"), **bcfg)
    with torch.random.fork_rng(devices=[]):
        backbone = backbone_from_config(backbone_config)
        net = RewardNet(backbone, doc["kind"], seed=rm_config.seed)
    check_weights_match(d, *load_model(net, str(d / WEIGHTS_FILE), strict=False))
    net.to(device).eval()
    tokenizer = load_tokenizer(d / TOKENIZER_DIR)
    return RewardScorer(net, tokenizer, rm_config.max_length, device)
