"""An LRU cache of scores keyed by (artifact id, the item's text hash), bounded in entries and in bytes."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


def text_key(prompt: str, response: str) -> str:
    """sha256 over both texts, length-prefixed so no two different (prompt, response) pairs share a key."""
    p, r = prompt.encode(), response.encode()
    return hashlib.sha256(len(p).to_bytes(8, "little") + p + r).hexdigest()


@dataclass(frozen=True)
class Scored:
    """What scoring one item produced (and what a cache hit gives back)."""

    score: float
    embedding: np.ndarray  # [EMBED_DIM] float32
    tokens: int
    prompt_tokens: int
    truncated: str | None  # None | "prompt" | "response"

    @property
    def nbytes(self) -> int:
        return int(self.embedding.nbytes) + 128  # the object, its floats and the key, roughly


class ScoreCache:
    """Least recently used first out, when either limit would be passed. Not thread-safe: the event loop owns it."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._items: OrderedDict[tuple[str, str], Scored] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, artifact_id: str, key: str) -> Scored | None:
        hit = self._items.get((artifact_id, key))
        if hit is not None:
            self._items.move_to_end((artifact_id, key))
        return hit

    def put(self, artifact_id: str, key: str, value: Scored) -> None:
        if self.max_entries <= 0 or value.nbytes > self.max_bytes:
            return
        old = self._items.pop((artifact_id, key), None)
        if old is not None:
            self.bytes -= old.nbytes
        self._items[(artifact_id, key)] = value
        self.bytes += value.nbytes
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.nbytes
