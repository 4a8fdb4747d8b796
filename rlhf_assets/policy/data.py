"""Prompts and responses as token ids, and the one batch layout used by SFT, rollouts and PPO updates.

Layout of a batch of B (prompt, response) sequences::

    [pad pad p p p p | r r r EOS pad pad]      prompt LEFT-padded to P, response RIGHT-padded to R
     <------ P ----->  <------ R ------>

so every response starts at column P (generation appends there) and the token predicting response token j sits
at column P - 1 + j. ``positions`` restart at 0 on each row's first real token, so padding never shifts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def encode_prompt(tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    """Prompt ids, keeping the END (the latest turns) when too long."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:] if len(ids) > max_tokens else ids


def encode_response(tokenizer: Any, response: str, max_tokens: int) -> list[int]:
    """Response ids with EOS appended when it fits; a response cut at the cap has no EOS (it did not end)."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(ids) < max_tokens:
        return ids + [tokenizer.eos_token_id]
    return ids[:max_tokens]


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor       # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    response_mask: torch.Tensor   # [B, R] 1 on real response tokens (EOS included)
    prompt_len: int               # P

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]

    def rows(self, index) -> SequenceBatch:
        """The sub-batch of some rows (a slice or an index tensor); the layout stays the same."""
        return SequenceBatch(self.input_ids[index], self.attention_mask[index], self.response_mask[index],
                             self.prompt_len)

    def widened(self, prompt_len: int, response_len: int, pad_id: int) -> SequenceBatch:
        """The same rows in a wider layout (prompts left-padded to ``prompt_len``, responses right-padded to
        ``response_len``): what a batch holding more rows would have looked like."""
        left, right = prompt_len - self.prompt_len, response_len - self.response_mask.shape[1]
        if left < 0 or right < 0:
            raise ValueError("a batch can only be widened")
        F = torch.nn.functional
        return SequenceBatch(F.pad(self.input_ids, (left, right), value=pad_id),
                             F.pad(self.attention_mask, (left, right), value=0),
                             F.pad(self.response_mask, (0, right), value=0), prompt_len)

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.response_mask.to(device), self.prompt_len)


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of equal-width rows, padded on the ``side`` given ("left" or "right")."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[i, cols] = torch.tensor(s, dtype=torch.long)
            mask[i, cols] = 1
    return ids, mask


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad(seqs, pad_id, "left")


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad(seqs, pad_id, "right")


def collate(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> SequenceBatch:
    p_ids, p_mask = left_pad(prompts, pad_id)
    r_ids, r_mask = right_pad(responses, pad_id)
    return SequenceBatch(torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1), r_mask, p_ids.shape[1])


def join(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
         response_mask: torch.Tensor) -> SequenceBatch:
    """A batch from already padded tensors (a rollout)."""
    return SequenceBatch(torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1),
                         response_mask, prompt_ids.shape[1])
