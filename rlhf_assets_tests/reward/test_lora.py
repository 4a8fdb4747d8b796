"""LoRA (RMConfig.lora_rank): only the adapters and the reward head train; the artifact stores them merged, loads
with load_reward_model and scores; bad target modules are refused with the names the backbone has."""

import numpy as np
import pytest
import torch

from rlhf_assets.reward.artifact import load_reward_model
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.data import PairCollator, PairEncoder, read_pairs
from rlhf_assets.reward.evaluate import score_pairs
from rlhf_assets.reward.loss import preference_loss
from rlhf_assets.reward.network import build_reward_net


def _adapter_or_head(name: str) -> bool:
    return "lora_" in name or name.startswith("head.")


def test_only_adapters_and_head_change_when_training(pairs_files):
    cfg = RMConfig(preset="tiny", max_length=48, lora_rank=4)
    net, tok = build_reward_net(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trained and all(_adapter_or_head(n) for n in trained)
    pairs = read_pairs(pairs_files[0])[:8]
    enc, col = PairEncoder(tok, 48, net.kind), PairCollator(tok.pad_token_id)
    batch = col.pad([enc.encode(p.prompt, p.chosen) for p in pairs] + [enc.encode(p.prompt, p.rejected) for p in pairs])
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)  # as RewardModel's optimizer
    for _ in range(3):
        r = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = preference_loss(r[:8], r[8:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any("lora_B" in k for k in changed) and all(_adapter_or_head(k) for k in changed), changed


@pytest.mark.slow
def test_lora_training_stores_a_merged_model_that_loads_and_scores(tmp_path, pairs_files):
    from rlhf_assets.reward.train import train_reward_model

    train, val = pairs_files
    cfg = RMConfig(preset="tiny", max_length=64, batch_size=8, epochs=2, lora_rank=8, lr=5e-3)
    result = train_reward_model(cfg, train, val, tmp_path / "w", store_root=str(tmp_path / "s"), progress=False)
    model = result.manifest["model"]
    assert model["lora_rank"] == 8 and model["n_trained_parameters"] < model["n_parameters"] / 50
    scorer = load_reward_model(result.artifact_dir)
    margins = score_pairs(scorer, val)
    assert np.isfinite(margins).all()
    # the merged weights: the adapted projections moved away from the seeded initialisation, nothing else did
    base, _ = build_reward_net(RMConfig(preset="tiny", max_length=64))
    start, stored = base.backbone.state_dict(), scorer.net.backbone.state_dict()
    moved = sorted(k for k in stored if not torch.allclose(stored[k], start[k]))
    assert moved and all(".query." in k or ".value." in k for k in moved), moved


def test_bad_lora_targets_are_refused_with_the_backbone_layers():
    with pytest.raises(ValueError, match=r"no linear layer named nope.*query"):
        build_reward_net(RMConfig(preset="tiny", max_length=48, lora_rank=4, lora_targets="query,nope"))
