"""LoRA adapters (peft) for the reward model's backbone and the policy's language model: one way for both.

:func:`add_lora` injects the adapters in place (the module keeps its class and interface: ``generate``,
``base_model``, ``config`` work as before) and freezes everything else in it; :func:`merged` gives a copy with the
adapters folded into the weights and the plain layers back, which is what artifacts store — a LoRA-trained model
loads, serves and is fine-tuned further like any other. No Dagster here.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn


def add_lora(module: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets: str | None = None
             ) -> nn.Module:
    """Inject LoRA adapters into ``module``'s linear layers named in ``targets`` (comma-separated; None: peft's
    default for the model family, e.g. query,value for BERT and q_proj,v_proj for Llama) and freeze every other
    parameter of ``module``. A family peft has no default for, or a target name the module lacks, is refused with
    the linear layers it does have."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS

    model_type = getattr(getattr(module, "config", None), "model_type", type(module).__name__)
    modules = [t.strip() for t in targets.split(",") if t.strip()] if targets else DEFAULT_TARGETS.get(model_type)
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})
    if not modules:
        raise ValueError(f"LoRA: peft has no default target modules for a {model_type!r} model; set lora_targets "
                         f"to some of its linear layers: {', '.join(linear)}")
    missing = [t for t in modules if t not in linear]
    if missing:
        raise ValueError(f"LoRA: the {model_type!r} model has no linear layer named {', '.join(missing)}; its "
                         f"linear layers: {', '.join(linear)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules), bias="none")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in transformers 5
        warnings.simplefilter("ignore", FutureWarning)
        inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` carries LoRA adapters (peft is imported only when it may: saving a plain model never
    needs it)."""
    if not any("lora_" in name for name, _ in module.named_parameters()):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def merged(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every LoRA layer merged into its base layer and replaced by it (``module`` itself
    when it has none)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not has_lora(module):
        return module
    out = copy.deepcopy(module)
    for name, layer in list(out.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, child, layer.get_base_layer())
    for p in out.parameters():
        p.requires_grad_(True)
    return out
