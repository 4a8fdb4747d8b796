"""Where new pairs come from: the production release's policy against its reference on the release's prompts;
before any release, the bundled sample data."""

import tempfile
from pathlib import Path

import polars as pl
import torch

from rlhf_assets.annotation.pair_sources import SAMPLE_SOURCE, new_pairs, production_release
from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.storage import Storage, sha256_bytes

RELEASE = "r20250601-2359"
PROMPTS = [f"\n\nHuman: question number {i}?\n\nAssistant:" for i in range(8)]


def tiny_release(storage: Storage) -> dict[str, str]:
    """A production release: a tiny SFT policy, the same with noise as its policy, and a pinned dataset."""
    from rlhf_assets.policy.artifacts import save_policy
    from rlhf_assets.policy.model import PolicyModel, tiny_lm, tiny_tokenizer

    store, tok = ArtifactStore(storage), tiny_tokenizer()
    model = PolicyModel(tiny_lm(tok, hidden=32, layers=1, seed=0))
    sampling = {"temperature": 1.0, "max_new_tokens": 8, "max_prompt_tokens": 24}
    with tempfile.TemporaryDirectory() as d:
        save_policy(model, tok, "sft", sampling, Path(d) / "sft")
        sft = store.put_dir(Path(d) / "sft", kind="sft_policy", manifest={"kind": "sft_policy"}).id
        with torch.no_grad():
            for p in model.lm.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        save_policy(model, tok, "ppo", sampling, Path(d) / "ppo")
        ppo = store.put_dir(Path(d) / "ppo", kind="ppo_policy", manifest={"kind": "ppo_policy"}).id
    table = pl.DataFrame({"prompt": PROMPTS, "split": ["train"] * 6 + ["test"] * 2})
    digest = storage.write_parquet(storage.path("datasets", "sha256", "d1.parquet"), table)
    assert digest == sha256_bytes(storage.read_bytes(storage.path("datasets", "sha256", "d1.parquet")))
    storage.write_json(storage.path("datasets", "sha256", "d1.manifest.json"), {"table_sha256": digest})
    storage.write_json(storage.path("registry", "releases", f"{RELEASE}.dataset.json"), {"dataset_id": "d1"})
    artifacts = {"policy": ppo, "sft_policy": sft}
    Registry(storage).set_alias("production", RELEASE, artifacts, action="promote", reason="test", actor="test")
    return artifacts


def test_sample_data_before_any_release_then_the_release_policy_against_its_reference(tmp_path):
    storage = Storage(tmp_path / "root")
    settings = AnnotationSettings(pairs_per_day=4)
    before = new_pairs(storage, "2025-06-02", settings, exclude=set())
    assert before.source == SAMPLE_SOURCE and before.pairs.height == 4 and "no production release" in before.note
    assert (before.pairs["response_a"] != before.pairs["response_b"]).all()

    artifacts = tiny_release(storage)
    assert production_release(storage)["release"] == RELEASE
    after = new_pairs(storage, "2025-06-02", settings, exclude=set())
    assert after.source == f"release {RELEASE}"
    rows = after.pairs
    assert 0 < rows.height <= 4 and set(rows["prompt"]) <= set(PROMPTS[:6])  # the train split's prompts
    assert set(rows["policy_a"]) == {artifacts["policy"]} and set(rows["policy_b"]) == {artifacts["sft_policy"]}
    assert (rows["response_a"] != rows["response_b"]).all() and (rows["response_a"].str.strip_chars() != "").all()
    assert set(rows["temperature"]) == {1.0}  # the policy's training config's
