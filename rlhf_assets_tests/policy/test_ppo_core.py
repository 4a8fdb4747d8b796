"""PPO's pieces against hand-computed values: GAE, reward placement, KL controllers, the clipped losses."""

import math

import pytest
import torch

from rlhf_assets.policy.data import collate
from rlhf_assets.policy.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    compute_gae,
    last_token_index,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    ppo_loss,
)


def test_gae_matches_a_hand_computed_example():
    # One response of 3 real tokens then padding; γ = 0.9, λ = 0.8.
    r = torch.tensor([[0.0, 0.5, 1.0, 7.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    g, gae_lambda = 0.9, 0.8
    d2 = 1.0 - 0.6                      # last real token: no bootstrap from padding
    d1 = 0.5 + g * 0.6 - 0.4
    d0 = 0.0 + g * 0.4 - 0.2
    a2 = d2
    a1 = d1 + g * gae_lambda * a2
    a0 = d0 + g * gae_lambda * a1
    adv, ret = compute_gae(r, v, m, g, gae_lambda)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.2, a1 + 0.4, a2 + 0.6, 0.0]]), atol=1e-6)


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[0.5, 0.5, 0.5]])
    adv, _ = compute_gae(r, v, torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[6 - 0.5, 5 - 0.5, 3 - 0.5]]))


def test_score_lands_on_the_last_real_token_of_a_rollout_batch():
    # Responses of length 3 and 1; prompts of different lengths (left-padded in the batch).
    batch = collate([[5, 6, 7], [8]], [[10, 11, 1], [1]], pad_id=0)
    assert batch.input_ids[1, :3].tolist() == [0, 0, 8] and batch.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    lp = torch.zeros(2, 3)
    rewards, _ = per_token_rewards(torch.tensor([2.0, -3.0]), lp, lp, batch.response_mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 0.0, 2.0], [-3.0, 0.0, 0.0]]


@pytest.mark.parametrize("padding", ["left", "right"])
def test_score_is_never_placed_on_padding(padding):
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    mask = right if padding == "right" else right.flip(-1)
    expected = [2, 0, 4] if padding == "right" else [4, 4, 4]
    assert last_token_index(mask).tolist() == expected
    lp = torch.zeros(3, 5)
    rewards, _ = per_token_rewards(torch.tensor([1.0, 2.0, 3.0]), lp, lp, mask, kl_coef=0.0)
    for row, col in enumerate(expected):
        assert rewards[row, col] == row + 1 and mask[row, col] == 1
        assert float(rewards[row].abs().sum()) == row + 1


def test_kl_penalty_is_per_token_and_masked():
    mask = torch.tensor([[1, 1, 0]])
    lp, ref = torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    rewards, kl = per_token_rewards(torch.tensor([1.0]), lp, ref, mask, kl_coef=0.5)
    assert kl.tolist() == [[0.5, -1.0, 0.0]]
    assert rewards.tolist() == [[-0.25, 0.5 + 1.0, 0.0]]


def test_adaptive_kl_controller_raises_beta_when_kl_is_too_high_and_lowers_it_when_too_low():
    high = AdaptiveKLController(0.1, target=4.0, horizon=100)
    high.update(8.0, n_steps=10)          # error clipped to +0.2 → β·(1 + 0.2·10/100)
    assert high.value == pytest.approx(0.1 * 1.02)
    low = AdaptiveKLController(0.1, target=4.0, horizon=100)
    low.update(3.0, n_steps=10)           # error −0.25 clipped to −0.2
    assert low.value == pytest.approx(0.1 * 0.98)
    exact = AdaptiveKLController(0.1, target=4.0, horizon=100)
    exact.update(4.0, n_steps=10)
    assert exact.value == pytest.approx(0.1)
    fixed = FixedKLController(0.1, 4.0, 100)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1
    restored = AdaptiveKLController(0.5, 4.0, 100)
    restored.load_state_dict(high.state_dict())
    assert restored.value == high.value


def test_clipped_surrogate_stops_the_gradient_beyond_the_clip_coef():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)  # ratios 1.5 and 0.5, ε = 0.2
    parts = ppo_loss(new, old, adv, torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2),
                     mask, clip_coef=0.2, clip_vloss=True, vf_coef=0.0, ent_coef=0.0)
    parts.loss.backward()
    assert torch.all(new.grad == 0)          # both tokens are clipped on the side that would keep improving
    assert float(parts.clip_frac) == 1.0
    assert float(parts.pg_loss) == pytest.approx(-(1.2 * 1.0 + 0.8 * -1.0) / 2)


def test_value_clipping_takes_the_pessimistic_loss():
    mask = torch.ones(1, 1)
    z = torch.zeros(1, 1)
    parts = ppo_loss(z, z, z, new_values=torch.tensor([[1.0]]), old_values=z, returns=torch.tensor([[1.0]]),
                     entropy=z, mask=mask, clip_coef=0.2, clip_vloss=True, vf_coef=1.0, ent_coef=0.0)
    # unclipped error 0, clipped value 0.2 → error 0.8² ; the max is taken
    assert float(parts.vf_loss) == pytest.approx(0.5 * 0.64)


def test_whitening_ignores_padding_and_running_moments_match_numpy():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    w = masked_whiten(x, m)
    assert w[0, 3] == 0 and float(masked_mean(w, m)) == pytest.approx(0.0, abs=1e-6)
    rm = RunningMoments()
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])
    rm.update(a)
    rm.update(b)
    allx = torch.cat([a, b]).double()
    assert rm.mean == pytest.approx(float(allx.mean()))
    assert rm.std == pytest.approx(float(allx.std(unbiased=False)))
