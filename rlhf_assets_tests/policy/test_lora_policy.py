"""LoRA for the policy (SFTConfig / PPOConfig lora_rank): SFT and a PPO update change only the adapters (and PPO's
value head); the stored artifact holds them merged, loads and generates like any policy."""

import tempfile

import pytest
import torch

from rlhf_assets.policy.artifacts import load_policy, save_policy
from rlhf_assets.policy.config import PPOConfig, SFTConfig
from rlhf_assets.policy.model import tiny_lm, tiny_tokenizer
from rlhf_assets.policy.ppo import PPOTrainer
from rlhf_assets.policy.sft import train_sft
from rlhf_assets_tests.support import TINY_PPO

pytestmark = pytest.mark.slow


def _moved(after: dict, before: dict) -> list[str]:
    return sorted(k for k in after if k in before and not torch.allclose(after[k], before[k]))


def test_sft_with_lora_moves_only_the_adapted_projections(tmp_path):
    rows = [{"prompt": f"say something nice {i}", "response": "thank you, that is kind"} for i in range(16)]
    result = train_sft(SFTConfig(epochs=2, lr=1e-2, lora_rank=4, max_prompt_tokens=16, max_response_tokens=8),
                       rows, tmp_path / "sft", store_root=str(tmp_path / "store"))
    model, tok, _ = load_policy(result.artifact_dir)
    start = tiny_lm(tiny_tokenizer(), 64, 2, 0).state_dict()  # the seeded base the tiny preset starts from
    moved = _moved({k[len("lm."):]: v for k, v in model.state_dict().items() if k.startswith("lm.")}, start)
    assert moved and all(".q_proj." in k or ".v_proj." in k for k in moved), moved
    out = model.lm.generate(**tok(["say something nice 1"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 0


def test_a_ppo_update_with_lora_changes_only_adapters_and_value_head(tiny_setup):
    cfg = PPOConfig(**{**TINY_PPO, "lora_rank": 4, "lr": 5e-3}).resolved()
    trainer = PPOTrainer(cfg, tiny_setup["sft_dir"], tiny_setup["rm_dir"], tiny_setup["prompts"],
                         tiny_setup["eval_prompts"], sft_rows=tiny_setup["sft_rows"])
    trainable = [n for n, p in trainer.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable), trainable
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.update(trainer.rollout(trainer.prompt_indices(0)))
    moved = _moved(trainer.policy.state_dict(), before)
    assert any("lora_B" in k for k in moved) and all("lora_" in k or k.startswith("value_head.") for k in moved)
    with tempfile.TemporaryDirectory() as d:
        save_policy(trainer.policy, trainer.tok, "ppo", {}, d)
        stored, _, _ = load_policy(d)
    sft, _, _ = load_policy(tiny_setup["sft_dir"])
    moved = _moved(stored.state_dict(), sft.state_dict())
    assert moved and all(".q_proj." in k or ".v_proj." in k or k.startswith("value_head.") for k in moved), moved


def test_lora_on_a_layer_the_policy_lacks_is_refused(tiny_setup):
    cfg = PPOConfig(**{**TINY_PPO, "lora_rank": 4, "lora_targets": "query"}).resolved()
    with pytest.raises(ValueError, match=r"no linear layer named query.*q_proj"):
        PPOTrainer(cfg, tiny_setup["sft_dir"], tiny_setup["rm_dir"], tiny_setup["prompts"], tiny_setup["eval_prompts"])
