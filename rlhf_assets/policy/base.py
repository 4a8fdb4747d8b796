"""The policy a release starts from, per preset: tiny (random init), small (SmolLM2 GGUF → a safetensors
``base_policy`` artifact, converted once and reused), hf (a local checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf_assets.policy.model import PolicyModel, load_gguf, load_hf, smollm2_gguf, tiny_lm, tiny_tokenizer

BASE_KIND = "base_policy"


def base_policy(config, store_root: str | None, log: Callable[[str], None]) -> tuple[PolicyModel, Any, list[str]]:
    """(model, tokenizer, parent artifact ids) for ``config.preset``."""
    if config.preset == "tiny":
        tok = tiny_tokenizer()
        return PolicyModel(tiny_lm(tok, config.tiny_hidden, config.tiny_layers, config.seed)), tok, []
    if config.preset == "hf":
        lm, tok = load_hf(config.model_path)
        return PolicyModel(lm), tok, []
    return _smollm2_base(store_root, log)


def _smollm2_base(store_root: str | None, log: Callable[[str], None]):
    import tempfile
    from pathlib import Path

    from rlhf_assets.policy.artifacts import load_policy, save_policy
    from rlhf_assets.registry.artifacts import ArtifactStore, file_sha256
    from rlhf_assets.storage import storage_from_env

    gguf = smollm2_gguf()
    source_sha = file_sha256(gguf)
    store = ArtifactStore(storage_from_env(store_root))
    for ref in store.list(BASE_KIND):
        if store.manifest(ref.id).get("source_sha256") == source_sha:
            model, tok, _ = load_policy(store.get(ref.id))
            return model, tok, [ref.id]
    log(f"converting {gguf.name} to a safetensors base_policy artifact (once)")
    lm, tok = load_gguf(gguf)
    model = PolicyModel(lm)
    with tempfile.TemporaryDirectory(prefix="rlhf-gguf-") as tmp:
        payload = save_policy(model, tok, "base", {"source": gguf.name}, Path(tmp) / "payload")
        ref = store.put_dir(payload, kind=BASE_KIND, manifest={"source": gguf.name, "source_sha256": source_sha})
    # Start from the stored bytes, as every later run will (the in-memory GGUF model can differ from them, e.g. an
    # untied output embedding that the artifact stores tied).
    model, tok, _ = load_policy(store.get(ref.id))
    return model, tok, [ref.id]
