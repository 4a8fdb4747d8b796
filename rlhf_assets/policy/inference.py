"""Running a stored policy for evaluation: load it, sample rollouts, teacher-force the log-probs of given responses.

Shared by off-policy evaluation (evaluation/), the KL check and the log simulator, so the log-probs a log records and
the ones a later rescoring computes come from one code path (fp32 teacher forcing; see evaluation/logged.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_assets.policy.artifacts import load_policy
from rlhf_assets.policy.data import collate, left_pad
from rlhf_assets.policy.generation import sample
from rlhf_assets.policy.model import response_outputs
from rlhf_assets.policy.ppo_core import token_logprobs

PolicySource = str | Path | tuple


def _artifact_id(d: Path) -> str:
    manifest = d / "manifest.json"
    if manifest.exists():
        try:
            return str(json.loads(manifest.read_text())["id"])
        except (ValueError, KeyError):
            pass
    return d.name


def policy_from(source: PolicySource, device: str | torch.device = "cpu") -> tuple[Any, Any, str]:
    """(PolicyModel in eval mode, tokenizer, id) from a policy artifact directory or a ``(model, tokenizer)`` /
    ``(model, tokenizer, id)`` tuple (already loaded, e.g. in tests). The id is the registry artifact id (from
    ``manifest.json``), else the directory name, else ``"in-memory"``."""
    if isinstance(source, tuple):
        if len(source) not in (2, 3):
            raise ValueError("a loaded policy is given as (model, tokenizer) or (model, tokenizer, id)")
        model, tok = source[0], source[1]
        pid = str(source[2]) if len(source) == 3 else "in-memory"
    else:
        d = Path(source)
        model, tok, _ = load_policy(d, device)
        pid = _artifact_id(d)
    if tok.pad_token_id is None:
        raise ValueError("the policy tokenizer has no pad token (load policies with policy.artifacts.load_policy)")
    return model.eval(), tok, pid


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def teacher_forced_logprobs(model: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                            pad_id: int, *, temperature: float = 1.0, batch_size: int = 32) -> list[np.ndarray]:
    """log-softmax(logits / T) of each response token given its prompt and the response before it, one fp32 forward
    pass per batch (policy/data.py layout: prompt left-padded, response right-padded). One array per row."""

    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite and > 0; got {temperature}")
    device = _device(model)
    out: list[np.ndarray] = []
    for i in range(0, len(prompt_ids), batch_size):
        batch = collate(prompt_ids[i:i + batch_size], response_ids[i:i + batch_size], pad_id).to(device)
        logits, _ = response_outputs(model, batch, temperature)
        lp = token_logprobs(logits, batch.response_ids).double().cpu().numpy()
        lens = batch.response_mask.sum(-1).tolist()
        out.extend(row[:n] for row, n in zip(lp, lens))
    return out


@torch.no_grad()
def rollout(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
            temperature: float = 1.0, generator: torch.Generator, batch_size: int = 32
            ) -> tuple[list[list[int]], list[str], list[np.ndarray]]:
    """Sample one response per prompt at ``temperature`` and record it: (response ids, texts, per-token log-probs
    of the distribution sampled from, recomputed by :func:`teacher_forced_logprobs`)."""

    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1; got {max_new_tokens}")
    device = _device(model)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    responses: list[list[int]] = []
    for i in range(0, len(prompt_ids), batch_size):
        p_ids, p_mask = left_pad(prompt_ids[i:i + batch_size], pad)
        s = sample(model.lm, p_ids.to(device), p_mask.to(device), int(max_new_tokens), eos, pad, generator,
                   temperature)
        for ids, m in zip(s.response_ids.tolist(), s.response_mask.tolist()):
            responses.append([t for t, keep in zip(ids, m) if keep])
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    logprobs = teacher_forced_logprobs(model, prompt_ids, responses, pad, temperature=temperature,
                                       batch_size=batch_size)
    return responses, texts, logprobs
