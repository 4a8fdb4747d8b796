"""Hugging Face helpers every model room shares: stay offline, load a local tokenizer."""

from __future__ import annotations

import os
from pathlib import Path


def set_offline() -> None:
    """Never touch the network when loading models or tokenizers."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_tokenizer(path: str | Path):
    set_offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - say which folder failed
        raise ValueError(f"cannot load a tokenizer from {path}: {exc}") from exc
