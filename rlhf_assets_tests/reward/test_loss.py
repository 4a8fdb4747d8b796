"""Bradley–Terry losses against hand-computed values."""

import math

import pytest
import torch

from rlhf_assets.reward.loss import bt_pair_loss, centering_penalty, pair_accuracy, preference_loss, weighted_mean

RC = torch.tensor([2.0, 0.0])
RR = torch.tensor([0.0, 1.0])  # Δ = [2, -1]


def softplus(x: float) -> float:  # −log σ(−x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def test_plain_bradley_terry():
    # −log σ(2) = log(1 + e^−2) = 0.126928; −log σ(−1) = log(1 + e) = 1.313262
    per_pair = bt_pair_loss(RC - RR)
    assert per_pair.tolist() == pytest.approx([0.126928, 1.313262], abs=1e-6)
    assert float(preference_loss(RC, RR)) == pytest.approx((0.126928 + 1.313262) / 2, abs=1e-6)


def test_margin_is_subtracted_from_the_reward_difference():
    # Δ = [2 − 0.5, −1 − 0.5] = [1.5, −1.5]
    expected = (softplus(-1.5) + softplus(1.5)) / 2
    assert expected == pytest.approx(0.951413, abs=1e-6)
    assert float(preference_loss(RC, RR, margin=0.5)) == pytest.approx(expected, abs=1e-6)


def test_soft_targets():
    t = torch.tensor([0.8, 0.5])
    # pair 1: 0.8·log(1+e^−2) + 0.2·log(1+e^2); pair 2: 0.5·log(1+e) + 0.5·log(1+e^−1)
    p1 = 0.8 * softplus(-2) + 0.2 * softplus(2)
    p2 = 0.5 * softplus(1) + 0.5 * softplus(-1)
    assert p1 == pytest.approx(0.526928, abs=1e-6) and p2 == pytest.approx(0.813262, abs=1e-6)
    assert bt_pair_loss(RC - RR, t).tolist() == pytest.approx([p1, p2], abs=1e-6)
    assert float(preference_loss(RC, RR, target=t)) == pytest.approx((p1 + p2) / 2, abs=1e-6)
    # target 1 is exactly the hard loss
    assert torch.allclose(bt_pair_loss(RC - RR, torch.ones(2)), bt_pair_loss(RC - RR))


def test_weights_are_normalised_by_their_sum():
    w = torch.tensor([3.0, 1.0])
    expected = (3 * 0.126928 + 1 * 1.313262) / 4
    assert float(preference_loss(RC, RR, weight=w)) == pytest.approx(expected, abs=1e-6)
    # only ratios matter
    assert float(preference_loss(RC, RR, weight=10 * w)) == pytest.approx(expected, abs=1e-6)
    # all-zero weights give 0, not NaN
    assert float(weighted_mean(torch.tensor([1.0, 2.0]), torch.zeros(2))) == 0.0


def test_centering_term():
    # r_c + r_r = [2, 1] → mean of squares = (4 + 1) / 2 = 2.5
    assert float(centering_penalty(RC, RR)) == pytest.approx(2.5)
    expected = (0.126928 + 1.313262) / 2 + 0.1 * 2.5
    assert float(preference_loss(RC, RR, center_coef=0.1)) == pytest.approx(expected, abs=1e-6)
    # weighted like the main term: (3·4 + 1·1) / 4
    assert float(centering_penalty(RC, RR, torch.tensor([3.0, 1.0]))) == pytest.approx(13 / 4)


def test_gradient_pushes_chosen_up_and_rejected_down():
    rc, rr = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    preference_loss(rc, rr).backward()
    assert float(rc.grad) == pytest.approx(-0.5) and float(rr.grad) == pytest.approx(0.5)  # −(1 − σ(0))


def test_numerically_stable_for_large_margins():
    loss = preference_loss(torch.tensor([0.0]), torch.tensor([200.0]))
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(200.0)


def test_pair_accuracy_with_ties_and_flipped_targets():
    acc = pair_accuracy(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.2]))
    assert acc.tolist() == [1.0, 0.5, 1.0]


def test_weight_total_makes_per_rank_losses_average_to_the_global_weighted_mean():
    """Two ranks with different weight sums: each divides by (global Σw)/2; the mean of their losses equals the
    single-process weighted mean (this is what keeps DDP exact with annotator-reliability weights)."""
    import torch

    from rlhf_assets.reward.loss import weighted_mean

    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weight = torch.tensor([0.9, 0.5, 0.7, 0.2])
    single = weighted_mean(values, weight)
    per_rank_total = weight.sum() / 2
    ranks = [weighted_mean(values[:2], weight[:2], per_rank_total), weighted_mean(values[2:], weight[2:], per_rank_total)]
    assert torch.isclose((ranks[0] + ranks[1]) / 2, single)
    naive = (weighted_mean(values[:2], weight[:2]) + weighted_mean(values[2:], weight[2:])) / 2
    assert not torch.isclose(naive, single)
