"""Policy artifacts on disk (safetensors only) and loading them back.

Payload (the registry adds ``manifest.json``):

    model.safetensors   PolicyModel state: ``lm.*`` and ``value_head.*``
    config.json         {"format", "stage": "base"|"sft"|"ppo", "lm_config", "train_config"}
    tokenizer/          the tokenizer's own files
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlhf_assets.hf_offline import load_tokenizer, set_offline
from rlhf_assets.policy.model import PolicyModel, lm_from_config

POLICY_FORMAT = "rlhf_assets.policy/v1"
WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR = "model.safetensors", "config.json", "tokenizer"


def save_policy(model: PolicyModel, tokenizer: Any, stage: str, train_config: dict, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.lm.config.tie_word_embeddings:
        # A tied output embedding is stored once (under the input embedding). Not via save_model: it would record
        # the alias in a multi-key metadata map, which safetensors writes in hash order — not byte-stable.
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    doc = {"format": POLICY_FORMAT, "stage": stage, "lm_config": model.lm.config.to_dict(),
           "train_config": train_config}
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    return out


def load_policy(artifact_dir: str | Path, device: str | torch.device = "cpu") -> tuple[PolicyModel, Any, dict]:
    """(model, tokenizer, config.json) from a policy artifact directory, offline."""
    from safetensors.torch import load_model

    set_offline()
    d = Path(artifact_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR):
        if not (d / name).exists():
            raise ValueError(f"{d} is not a policy artifact: {name} is missing")
    doc = json.loads((d / CONFIG_FILE).read_text())
    if doc.get("format") != POLICY_FORMAT:
        raise ValueError(f"{d / CONFIG_FILE}: unknown artifact format {doc.get('format')!r}")
    model = PolicyModel(lm_from_config(doc["lm_config"]))
    missing, unexpected = load_model(model, str(d / WEIGHTS_FILE), strict=False)
    # A tied output embedding is stored once; anything else missing is a broken artifact.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and model.lm.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{d / WEIGHTS_FILE} does not match its config.json: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if model.lm.config.tie_word_embeddings:
        model.lm.tie_weights()
    tokenizer = load_tokenizer(d / TOKENIZER_DIR)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device), tokenizer, doc
