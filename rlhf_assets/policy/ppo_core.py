"""PPO's pieces as small pure functions, each trick named where it happens (after CleanRL's ppo.py).

Shapes: ``[B, R]`` over the response tokens of a batch (see policy/data.py); ``mask`` is 1 on real response
tokens (EOS included) and 0 on padding. Responses are right-padded, so each row's real tokens are a prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                n_tokens: float | None = None) -> torch.Tensor:
    """Mean over the real tokens; ``n_tokens`` divides instead of this mask's count (one rank's share of a mean over
    a batch split across processes: the ranks' shares sum to the batch's mean)."""
    mask = mask.to(x.dtype)
    if n_tokens is not None:
        return (x * mask).sum() / max(n_tokens, 1.0)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Advantage whitening: zero mean, unit variance over the real tokens (padding left at 0)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token) for each position: ``logits[:, t]`` is the distribution of ``tokens[:, t]``."""
    return torch.gather(F.log_softmax(logits.float(), -1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the padding is on (empty rows → 0)."""
    cols = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return ((mask.long() * cols).argmax(-1)).clamp(min=0)


def per_token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-shaped rewards: −β·(log π − log π_ref) on every real token, plus the sequence score placed on the LAST
    REAL token (never on padding). Returns (rewards, per-token KL)."""
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    rewards = -kl_coef * kl
    idx = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0]), idx] += score.to(rewards.dtype) * (m.sum(-1) > 0).to(rewards.dtype)
    return rewards, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each response; the value after the last real token is 0.

    δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t;  A_t = δ_t + γλ·m_{t+1}·A_{t+1}.  Returns (advantages, returns = A + V),
    both 0 on padding.
    """
    m = mask.to(values.dtype)
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_m = m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v * next_m - values[:, t]
        last = delta + gamma * gae_lambda * next_m * last
        adv[:, t] = last
    adv = adv * m
    return adv, (adv + values) * m


@dataclass
class LossParts:
    loss: torch.Tensor
    pg_loss: torch.Tensor
    vf_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_frac: torch.Tensor
    value_clip_frac: torch.Tensor


def ppo_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor,
             mask: torch.Tensor, clip_coef: float, clip_vloss: bool, vf_coef: float,
             ent_coef: float, n_tokens: float | None = None) -> LossParts:
    """Clipped surrogate + (clipped, with ``clip_vloss``) value loss − entropy bonus, token-level means over real
    tokens; as CleanRL's ppo.py, with the same names. ``n_tokens``: the micro-batch's token count when these rows
    are one rank's share of it (every part is then that rank's share of the micro-batch's mean)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    # Clipped surrogate objective (pessimistic max of the two losses).
    pg_losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef))
    pg_loss = masked_mean(pg_losses, mask, n_tokens=n_tokens)
    # Value clipping (clip_vloss): the new value may move at most clip_coef from the rollout's value.
    v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
    v_unclipped = (new_values - returns) ** 2
    vf_losses = torch.max(v_unclipped, (v_clipped - returns) ** 2) if clip_vloss else v_unclipped
    vf_loss = 0.5 * masked_mean(vf_losses, mask, n_tokens=n_tokens)
    ent = masked_mean(entropy, mask, n_tokens=n_tokens)
    loss = pg_loss + vf_coef * vf_loss - ent_coef * ent
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask, n_tokens=n_tokens)  # Schulman's k3 estimator
        clip_frac = masked_mean(((ratio - 1).abs() > clip_coef).float(), mask, n_tokens=n_tokens)
        value_clip_frac = (masked_mean((v_unclipped < (v_clipped - returns) ** 2).float(), mask, n_tokens=n_tokens)
                           if clip_vloss
                           else torch.zeros((), device=mask.device))
    return LossParts(loss, pg_loss.detach(), vf_loss.detach(), ent.detach(), approx_kl, clip_frac, value_clip_frac)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) over real tokens (1 = perfect critic, ≤ 0 = useless)."""
    var_y = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return float("nan") if float(var_y) == 0.0 else float(1 - var_d / var_y)


class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon) after each rollout of n
    samples, so β rises when the policy drifts too far from the reference and falls when it stays close."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController(AdaptiveKLController):
    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class RunningMoments:
    """Running mean / std of reward-model scores (Chan et al. parallel update), for reward normalization."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        n, mean, var = float(x.numel()), float(x.mean()), float(x.var(unbiased=False)) if x.numel() > 1 else 0.0
        if n == 0:
            return
        delta, total = mean - self.mean, self.count + n
        m2 = self.var * self.count + var * n + delta ** 2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / max(self.std, 1e-4)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
