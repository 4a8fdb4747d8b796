"""A reward model loaded for serving: tokenise like training, score a batch, embed its prompts, calibrate a margin.

Two backends run the same network:

- ``torch``: the stored RewardNet in inference mode (SDPA attention where transformers' model has it);
- ``onnx``: the same network (with the embedding head below) exported once to ONNX from the stored safetensors and run
  by ONNX Runtime; the export is cached on local disk by the artifact's id and the exporter's version, never inside
  the content-addressed artifact.

Each scored item also gets a small fixed-size **prompt embedding** for prompt-drift detection: the mean of the
model's last hidden states over the prompt's positions in the same forward pass (no extra compute), through a fixed
seeded random projection to :data:`EMBED_DIM` dimensions (Johnson–Lindenstrauss: distances are kept up to a small
distortion). For encoder backbones those positions also attend to the response; reference and current windows are
embedded the same way, which is what a drift test compares.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_assets.reward.artifact import load_reward_model
from rlhf_assets.reward.calibration import calibrator_from_dict
from rlhf_assets.reward.data import EncodedSequence, PairCollator
from rlhf_assets.reward.network import RewardNet, hidden_size_of

EMBED_DIM = 32
EMBED_SEED = 20_261_204  # fixed: every model version embeds through its own, reproducible projection
ONNX_EXPORT_VERSION = "1"  # bump when the exported graph changes
ONNX_CACHE_ENV = "RLHF_ONNX_CACHE"


def projection(hidden: int, dim: int = EMBED_DIM, seed: int = EMBED_SEED) -> torch.Tensor:
    """[hidden, dim] Gaussian matrix / √dim from a fixed seed (the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, dim, generator=g, dtype=torch.float32) / dim ** 0.5


class ServingNet(nn.Module):
    """RewardNet + the prompt embedding: (input_ids, attention_mask, token_type_ids, prompt_mask) → (rewards [N],
    embeddings [N, EMBED_DIM]). What both backends run (ONNX exports exactly this module)."""

    def __init__(self, net: RewardNet):
        super().__init__()
        self.net = net
        self.register_buffer("proj", projection(hidden_size_of(net.backbone.config)), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rewards, hidden = self.net.forward_features(input_ids, attention_mask, token_type_ids)
        weights = prompt_mask.to(hidden.dtype).unsqueeze(-1)  # [N, L, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return rewards, pooled.float() @ self.proj


@dataclass(frozen=True)
class Batch:
    """Padded model inputs for a list of encoded items (numpy, so both backends take them)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    prompt_mask: np.ndarray

    @classmethod
    def of(cls, seqs: Sequence[EncodedSequence], collator: PairCollator) -> Batch:
        padded = collator.pad(seqs, prompt_mask=True)  # the training layout, plus the prompt's positions
        return cls(**{k: v.numpy() for k, v in padded.items()})


class TorchBackend:
    """PyTorch in inference mode; ``precision="bf16"`` runs the matmuls in bfloat16 under autocast (CPUs with
    AVX512-BF16 or AMX, and GPUs), scores returned as float."""

    name = "torch"

    def __init__(self, net: RewardNet, threads: int = 0, precision: str = "fp32"):
        if threads:
            torch.set_num_threads(threads)
        self.model = ServingNet(net).eval()
        self.precision = precision
        self.name = "torch" if precision == "fp32" else f"torch-{precision}"

    @torch.inference_mode()
    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            rewards, emb = self.model(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask,
                                                                     batch.token_type_ids, batch.prompt_mask)))
        return rewards.double().numpy(), emb.float().numpy()


def onnx_cache_dir() -> Path:
    return Path(os.environ.get(ONNX_CACHE_ENV) or Path.home() / ".cache" / "rlhf_assets" / "onnx")


class OnnxBackend:
    name = "onnx"

    def __init__(self, net: RewardNet, artifact_id: str, threads: int = 0):
        import onnxruntime as ort

        path = export_onnx(net, artifact_id)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.path = path

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: getattr(batch, name) for name in self.inputs}
        rewards, emb = self.session.run(["rewards", "embeddings"], feed)
        return rewards.astype(np.float64), emb


def export_onnx(net: RewardNet, artifact_id: str) -> Path:
    """The ONNX graph of ``ServingNet(net)`` for this artifact, exported once and cached on local disk (atomic)."""
    from rlhf_assets.storage import atomic_write_local

    key = hashlib.sha256(f"{artifact_id}:{ONNX_EXPORT_VERSION}:{torch.__version__}".encode()).hexdigest()[:16]
    path = onnx_cache_dir() / artifact_id / f"serving-{key}.onnx"
    if path.exists():
        return path
    model = ServingNet(net).eval()
    dummy = Batch.of([EncodedSequence([1, 2, 3, 4], [0, 0, 1, 1], None, 2),
                      EncodedSequence([1, 2, 3], [0, 0, 1], None, 1)], PairCollator(0))
    args = tuple(torch.from_numpy(a) for a in (dummy.input_ids, dummy.attention_mask, dummy.token_type_ids,
                                               dummy.prompt_mask))
    dynamic = {name: {0: "batch", 1: "length"} for name in ("input_ids", "attention_mask", "token_type_ids",
                                                             "prompt_mask")}
    buffer = io.BytesIO()
    # The tracer warns that shape checks become constants; they hold for every sequence the encoder makes (at least
    # two tokens, right padding) and the parity test checks other batch shapes than this dummy's.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, input_names=list(dynamic), output_names=["rewards", "embeddings"],
                          dynamic_axes={**dynamic, "rewards": {0: "batch"}, "embeddings": {0: "batch"}},
                          opset_version=17, dynamo=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_local(path, buffer.getvalue())
    (path.parent / "source.json").write_text(json.dumps({"artifact_id": artifact_id, "torch": torch.__version__}))
    return path


class ServedModel:
    """One reward-model version ready to serve: its tokeniser (the training one), a backend and its calibrator."""

    def __init__(self, artifact_dir: str | Path, artifact_id: str, *, calibrator: dict[str, Any] | None = None,
                 calibration_id: str | None = None, backend: str = "torch", threads: int = 0,
                 precision: str = "fp32"):
        scorer = load_reward_model(artifact_dir)
        self.artifact_id = artifact_id
        self.calibration_id = calibration_id
        self.encoder = scorer.encoder
        self.max_length = scorer.max_length
        self.collator = scorer.collator
        self.kind = scorer.kind
        self.calibrator = calibrator_from_dict(calibrator) if calibrator else None
        if backend == "onnx":
            if precision != "fp32":
                raise ValueError("the onnx backend runs in fp32; bf16 needs the torch backend")
            self.backend: Any = OnnxBackend(scorer.net, artifact_id, threads)
        elif backend == "torch":
            self.backend = TorchBackend(scorer.net, threads, precision)
        else:
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")

    def encode(self, prompt: str, response: str) -> EncodedSequence:
        return self.encoder.encode(prompt, response)

    def run(self, seqs: Sequence[EncodedSequence]) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], prompt embeddings [N, EMBED_DIM]) for already encoded items, in their order."""
        return self.backend.run(Batch.of(seqs, self.collator))

    def probability(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated P(a ≻ b) from r(a) − r(b); without a calibrator the Bradley–Terry sigmoid of the margin."""
        margin = np.asarray(margin, dtype=np.float64)
        if self.calibrator is None:
            return 1.0 / (1.0 + np.exp(-margin))
        return np.asarray(self.calibrator.predict(margin), dtype=np.float64)

    def warm_up(self) -> None:
        """One forward pass (allocations, lazy kernels) before the model takes traffic."""
        self.run([self.encode("warm up", "ok"), self.encode("", "ready")])
