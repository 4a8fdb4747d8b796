"""Sampling responses from the policy with a KV cache and explicit torch.Generators (so rollouts are exactly
reproducible and resumable): one generator for the batch (its state is part of a checkpoint), or one per row (each
seeded from what the row is, so a row's sample does not depend on which other rows share its batch — how PPO's
rollouts come out the same on any number of processes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_assets.policy.model import positions


@dataclass
class Samples:
    response_ids: torch.Tensor   # [B, R] right-padded with pad_id
    response_mask: torch.Tensor  # [B, R] 1 on real tokens (EOS included)
    ended: torch.Tensor          # [B] bool: the response ended with EOS (False = hit the length cap)


@torch.no_grad()
def sample(lm: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
           eos_id: int, pad_id: int, generator: torch.Generator | Sequence[torch.Generator],
           temperature: float = 1.0) -> Samples:
    """Sample up to ``max_new_tokens`` per left-padded prompt; stops early when every row has emitted EOS.
    ``generator``: one for the whole batch, or a sequence of one per row."""
    per_row = not isinstance(generator, torch.Generator)
    if per_row and len(generator) != prompt_ids.shape[0]:
        raise ValueError(f"{len(generator)} generators for {prompt_ids.shape[0]} rows")
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    attn = prompt_mask.clone()
    pos = positions(attn)
    out = lm(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, next_pos = out.cache, pos[:, -1:] + 1
    logits = out.logits[:, -1, :]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, masks = [], []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, -1)
        if per_row:
            cpu = probs.cpu()
            tok = torch.cat([torch.multinomial(cpu[i:i + 1], 1, generator=g) for i, g in enumerate(generator)])
            tok = tok.squeeze(1).to(device)
        else:
            tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
        real = ~finished
        tok = torch.where(real, tok, torch.full_like(tok, pad_id))
        tokens.append(tok)
        masks.append(real.long())
        finished = finished | (real & (tok == eos_id))
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        attn = torch.cat([attn, real.long().unsqueeze(1)], 1)
        out = lm(input_ids=tok.unsqueeze(1), attention_mask=attn, position_ids=next_pos, cache=cache,
                 use_cache=True, logits_to_keep=1)
        cache, next_pos = out.cache, next_pos + 1
        logits = out.logits[:, -1, :]
    return Samples(torch.stack(tokens, 1), torch.stack(masks, 1), finished)
