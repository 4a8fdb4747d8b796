"""A tiny end-to-end PPO run in-process: proxy reward rises, KL stays within budget, the KL budget acts, and the
kept checkpoint is the best held-out one."""

import math

import pytest

from rlhf_assets.policy.config import PPOConfig
from rlhf_assets.policy.ppo import train_ppo
from rlhf_assets_tests.support import TINY_PPO


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(tiny_setup, tmp_path, **overrides):
    cfg = PPOConfig(**{**TINY_PPO, **overrides})
    return train_ppo(cfg, tiny_setup["sft_dir"], tiny_setup["rm_dir"], tiny_setup["prompts"],
                     tiny_setup["eval_prompts"], tmp_path / "ppo", sft_rows=tiny_setup["sft_rows"],
                     store_root=tiny_setup["store"], parent_ids=[tiny_setup["sft_id"], tiny_setup["rm_id"]])


def test_reward_model_of_the_setup_learned_the_preference(tiny_setup):
    assert tiny_setup["rm_val_accuracy"] >= 0.9


def test_tiny_ppo_raises_proxy_reward_within_the_kl_budget(tiny_setup, tmp_path):
    r = _run(tiny_setup, tmp_path)
    start, selected = r.evals[0], r.selected
    assert start["step"] == 0 and start["kl"] == 0.0
    assert selected["proxy_reward"] > start["proxy_reward"] + 0.3, r.evals
    assert all(h["kl"] <= PPOConfig.kl_budget for h in r.history)
    assert selected["kl"] <= PPOConfig.kl_budget
    # the kept checkpoint is the best held-out one by the regularised objective, not simply the last
    assert selected["objective"] == max(e["objective"] for e in r.evals if e["kl"] <= PPOConfig.kl_budget)
    assert all(e["objective"] == pytest.approx(e["proxy_reward"] - e["beta"] * e["kl"]) for e in r.evals)
    assert r.selected_step == selected["step"]
    for key in ("proxy_reward", "kl", "kl_per_token", "beta", "entropy", "clip_frac", "approx_kl", "value_loss",
                "explained_variance", "response_length", "no_eos_share", "rollout_tokens_per_s",
                "train_tokens_per_s"):
        assert key in r.history[-1], key
    assert all(math.isfinite(h["proxy_reward"]) and math.isfinite(h["kl"]) for h in r.history)
    m = r.manifest
    assert m["kind"] == "ppo_policy" and m["parent_ids"] == [tiny_setup["sft_id"], tiny_setup["rm_id"]]
    assert m["selected_step"] == r.selected_step and m["config"]["seed"] == 0


def test_kl_over_budget_rejects_steps_then_stops_with_a_recorded_reason(tiny_setup, tmp_path):
    # A budget far below what one update moves the policy: updates are rejected (β doubles), then it stops.
    r = _run(tiny_setup, tmp_path, kl_budget=1e-3, lr=5e-3, max_rejections=2, init_kl_coef=0.01, steps=8)
    actions = [e["action"] for e in r.events]
    assert actions.count("reject") == 2 and actions[-1] == "stop", r.events
    assert "exceeds the budget" in r.stop_reason
    betas = [h["beta"] for h in r.history if h.get("rejected")]
    assert len(betas) == 2
    assert r.selected_step == 0  # nothing later was inside the budget: the SFT policy itself is kept
    stopped = _run(tiny_setup, tmp_path / "stop", kl_budget=1e-3, lr=5e-3, on_kl_over_budget="stop")
    assert [e["action"] for e in stopped.events] == ["stop"]


def test_selection_by_proxy_reward_alone_is_available(tiny_setup, tmp_path):
    r = _run(tiny_setup, tmp_path, select_by="proxy_reward", steps=4, eval_every=2)
    assert r.selected["proxy_reward"] == max(e["proxy_reward"] for e in r.evals)


def test_sft_mix_adds_its_loss(tiny_setup, tmp_path):
    r = _run(tiny_setup, tmp_path, sft_mix_share=0.25, steps=2, eval_every=2)
    assert "sft_nll" in r.history[0] and r.history[0]["sft_nll"] > 0
