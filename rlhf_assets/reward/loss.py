"""Bradley–Terry reward-model losses: pure torch functions.

With Δ = r_c − r_r − margin and a soft target t = P(chosen ≻ rejected):

    per-pair loss  ℓ = −[t · log σ(Δ) + (1 − t) · log σ(−Δ)]       (t = 1 gives the usual −log σ(Δ))
    batch loss     L = Σ w_i ℓ_i / Σ w_i  +  λ · Σ w_i (r_c,i + r_r,i)² / Σ w_i

The second term is reward centering (Eisenstein et al. 2023, "Helping or Herding?"; TRL's
``center_rewards_coefficient``): it pins each pair's rewards around 0 so the scale stays comparable across runs;
it is the mean over pairs of the squared sum, weighted like the main term. Weights are normalised by their sum, so
only their ratios matter; an all-zero-weight batch gives 0 (no NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reward_margin(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Δ = r_c − r_r − margin."""
    return r_chosen - r_rejected - margin


def bt_pair_loss(delta: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair (soft) Bradley–Terry negative log-likelihood; numerically stable via logsigmoid."""
    if target is None:
        return -F.logsigmoid(delta)
    target = target.to(delta.dtype)
    return -(target * F.logsigmoid(delta) + (1.0 - target) * F.logsigmoid(-delta))


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None = None,
                  weight_total: torch.Tensor | None = None) -> torch.Tensor:
    """Σ w·v / Σ w (plain mean without weights; 0 when all weights are 0).

    ``weight_total`` replaces the local Σ w: under DDP each rank passes (global Σ w) / world_size, so the averaged
    gradient is exactly the single-process weighted mean over the global batch.
    """
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    total = weight.sum() if weight_total is None else weight_total.to(values.dtype)
    return (weight * values).sum() / total.clamp_min(torch.finfo(values.dtype).tiny)


def centering_penalty(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                      weight: torch.Tensor | None = None,
                      weight_total: torch.Tensor | None = None) -> torch.Tensor:
    """mean((r_c + r_r)²), weighted like the main loss."""
    return weighted_mean((r_chosen + r_rejected) ** 2, weight, weight_total)


def preference_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, *, target: torch.Tensor | None = None,
                    weight: torch.Tensor | None = None, margin: float | torch.Tensor = 0.0,
                    center_coef: float = 0.0, weight_total: torch.Tensor | None = None) -> torch.Tensor:
    """The full batch loss (see the module docstring)."""
    delta = reward_margin(r_chosen, r_rejected, margin)
    loss = weighted_mean(bt_pair_loss(delta, target), weight, weight_total)
    if center_coef:
        loss = loss + center_coef * centering_penalty(r_chosen, r_rejected, weight, weight_total)
    return loss


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                  target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair correctness: 1 when the model prefers the side the (hard-thresholded) target prefers, 0.5 on ties."""
    delta = r_chosen - r_rejected
    pred = torch.where(delta > 0, 1.0, torch.where(delta < 0, 0.0, 0.5))
    if target is None:
        return pred
    return torch.where(target >= 0.5, pred, 1.0 - pred)
