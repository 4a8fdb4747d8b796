"""Policy artifacts on disk (safetensors only) and loading them back.

Payload (the registry adds ``manifest.json``):

    model.safetensors   PolicyModel state: ``lm.*`` and ``value_head.*``
    config.json         {"format", "stage": "base"|"sft"|"ppo", "lm_config", "train_config"}
    tokenizer/          the tokenizer's own files
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from rlhf_assets.policy.model import PolicyModel, lm_from_config

POLICY_FORMAT = "rlhf_assets.policy/v1"


def save_policy(model: PolicyModel, tokenizer: Any, stage: str, train_config: dict, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if has_lora(model.lm):  # LoRA: stored merged, so it loads, generates and trains further like any policy
        plain = PolicyModel(merged(model.lm))
        plain.value_head.load_state_dict(model.value_head.state_dict())
        model = plain
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.lm.config.tie_word_embeddings:
        # A tied output embedding is stored once (under the input embedding). Not via save_model: it would record
        # the alias in a multi-key metadata map, which safetensors writes in hash order — not byte-stable.
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    doc = {"format": POLICY_FORMAT, "stage": stage, "lm_config": model.lm.config.to_dict(),
           "train_config": train_config}
    write_config_and_tokenizer(out, doc, tokenizer)
    return out


def load_policy(artifact_dir: str | Path, device: str | torch.device = "cpu") -> tuple[PolicyModel, Any, dict]:
    """(model, tokenizer, config.json) from a policy artifact directory, offline."""
    from safetensors.torch import load_model

    set_offline()
    d, doc = read_config(artifact_dir, POLICY_FORMAT, "policy")
    model = PolicyModel(lm_from_config(doc["lm_config"]))
    missing, unexpected = load_model(model, str(d / WEIGHTS_FILE), strict=False)
    tied = model.lm.config.tie_word_embeddings
    # A tied output embedding is stored once; anything else missing is a broken artifact.
    check_weights_match(d, [k for k in missing if not (tied and k.endswith("lm_head.weight"))], unexpected)
    if tied:
        model.lm.tie_weights()
    tokenizer = load_tokenizer(d / TOKENIZER_DIR)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device), tokenizer, doc
