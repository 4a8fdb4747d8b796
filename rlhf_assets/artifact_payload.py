"""The payload of a model artifact on disk, the same for policies and reward models (the registry adds
``manifest.json``):

    model.safetensors   the weights — safetensors, never pickle
    config.json         {"format": <the model type's format string>, ...}: what rebuilds the network
    tokenizer/          the tokenizer's own files

:mod:`rlhf_assets.policy.artifacts` and :mod:`rlhf_assets.reward.artifact` write and read their own weights and
config; the layout, the directory check and the weight-match check are here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR = "model.safetensors", "config.json", "tokenizer"


def write_config_and_tokenizer(out: Path, doc: dict[str, Any], tokenizer: Any) -> None:
    """``config.json`` (sorted, indented, stable bytes) and ``tokenizer/`` of a payload in ``out``."""
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))


def read_config(artifact_dir: str | Path, fmt: str, what: str) -> tuple[Path, dict[str, Any]]:
    """(the directory, its config.json) once ``artifact_dir`` is checked to be a ``what`` artifact (e.g.
    ``"policy"``): weights, config and tokenizer present, and the config's ``format`` is ``fmt``. Otherwise a
    ``ValueError`` that names the directory and the missing file, or the config file and the format it has."""
    d = Path(artifact_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR):
        if not (d / name).exists():
            raise ValueError(f"{d} is not a {what} artifact: {name} is missing")
    doc = json.loads((d / CONFIG_FILE).read_text())
    if doc.get("format") != fmt:
        raise ValueError(f"{d / CONFIG_FILE}: unknown artifact format {doc.get('format')!r}")
    return d, doc


def check_weights_match(d: Path, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    """A ``ValueError`` naming the weights file when loading it left parameters ``missing`` or ``unexpected``
    (what safetensors' ``load_model(strict=False)`` returns; the caller drops the ones it expects)."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise ValueError(f"{d / WEIGHTS_FILE} does not match its config.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
