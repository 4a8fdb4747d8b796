"""Distil a reward model (the teacher) into a smaller student of the same family: fewer layers, narrower.

The student is the teacher's backbone config with ``num_hidden_layers`` / ``hidden_size`` (and the matching heads
and feed-forward width) replaced, initialised at random (seeded) — or, when it keeps the teacher's width, from the
teacher's embeddings and first layers (DistilBERT's layer-dropping start). It is trained on

    L = regression_weight · mean((r_s − r_t)²) + pair_weight · BT(r_s(chosen) − r_s(rejected); target, weight)

with the teacher's scores r_t of every training text (the human pairs' chosen and rejected responses plus any extra
unlabelled responses, e.g. policy samples) as regression targets, and the Bradley–Terry loss on the human pairs.
Training is a plain single-process torch loop: the student is small by design (seconds to minutes on CPU), needs no
DDP, and the teacher scores it regresses on are computed once up front. The result is a normal reward-model artifact
(``load_reward_model`` reads it) plus ``calibration.json``: a Platt calibrator of the student's margin fitted on the
validation pairs, which the serving cascade uses to decide which items are uncertain. No Dagster here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings
from rlhf_assets.reward.artifact import RewardScorer
from rlhf_assets.reward.calibration import PlattCalibrator
from rlhf_assets.reward.data import PreferencePair
from rlhf_assets.reward.evaluate import evaluate_margins, score_pairs
from rlhf_assets.reward.loss import preference_loss
from rlhf_assets.reward.network import RewardNet, backbone_from_config

#: Config attributes that hold the depth / width of a transformers backbone, by meaning.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
HEAD_KEYS = ("num_attention_heads", "n_head")
FFN_KEYS = ("intermediate_size", "n_inner")


@settings
class DistillSettings(FileConfig):
    """The student of ``rm_distilled``: its size and how it is trained against the release's reward model."""

    student_layers: Annotated[int, Field(ge=1)] = 1
    """Transformer layers of the student (the teacher's tiny preset has 2, small has 6)."""
    student_hidden: Annotated[int | None, Field(ge=8)] = 32
    """Hidden width of the student (None: the teacher's, and then its embeddings and first layers are copied)."""
    student_heads: Annotated[int, Field(ge=1)] = 2
    """Attention heads of the student (must divide student_hidden)."""
    epochs: Annotated[int, Field(ge=1)] = 4
    """Passes over the training pairs."""
    batch_size: Annotated[int, Field(ge=1)] = 16
    """Pairs per step (two texts each)."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """AdamW learning rate (constant)."""
    regression_weight: Annotated[float, Field(ge=0)] = 1.0
    """Weight of the mean squared error to the teacher's scores."""
    pair_weight: Annotated[float, Field(ge=0)] = 1.0
    """Weight of the Bradley–Terry loss on the human pairs."""
    max_train_pairs: Annotated[int | None, Field(ge=1)] = None
    """Use at most this many training pairs (None: all)."""
    cascade_band: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Half-width of the uncertainty band around 0.5: the cascade sends items with |P − 0.5| ≤ band to the teacher."""
    policy_samples: Annotated[int, Field(ge=0)] = 128
    """Train prompts of the release answered by the production policy (the one whose answers the served reward
    model and its cascade score), added as unlabelled texts the student learns the teacher's scores on (0: none;
    none either while nothing with a policy is in production)."""
    bench_items: Annotated[int, Field(ge=1)] = 64
    """Texts the serving-speed measurement scores per repeat (student and teacher alike)."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seeds the student's initialisation and the data order."""

    CONFIG_LABEL = "distill"

    def __post_init__(self) -> None:
        if self.regression_weight == 0 and self.pair_weight == 0:
            raise ValueError("DistillSettings: regression_weight and pair_weight are both 0 (nothing to learn)")
        if self.student_hidden is not None and self.student_hidden % self.student_heads:
            raise ValueError(f"DistillSettings.student_heads={self.student_heads} must divide "
                             f"student_hidden={self.student_hidden}")


def _set_first(config: Any, keys: Sequence[str], value: int) -> bool:
    for key in keys:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, value)
            return True
    return False


def student_config(teacher_config: Any, s: DistillSettings) -> Any:
    """The teacher's backbone config with the student's depth and width (feed-forward width scaled alike)."""
    cfg = copy.deepcopy(teacher_config)
    if not _set_first(cfg, LAYER_KEYS, s.student_layers):
        raise ValueError(f"cannot set the number of layers of a {cfg.model_type} backbone")
    if s.student_hidden is not None:
        teacher_width = next(getattr(cfg, k) for k in WIDTH_KEYS if isinstance(getattr(cfg, k, None), int))
        ffn = next((getattr(cfg, k) for k in FFN_KEYS if isinstance(getattr(cfg, k, None), int)), None)
        _set_first(cfg, WIDTH_KEYS, s.student_hidden)
        _set_first(cfg, HEAD_KEYS, s.student_heads)
        if hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = s.student_heads
        if hasattr(cfg, "head_dim"):
            cfg.head_dim = s.student_hidden // s.student_heads
        if ffn is not None:
            _set_first(cfg, FFN_KEYS, max(8, ffn * s.student_hidden // teacher_width))
    return cfg


def build_student(teacher: RewardNet, s: DistillSettings, seed: int | None = None) -> RewardNet:
    """A seeded student; with the teacher's width, the teacher's matching tensors (embeddings, first layers, head)
    are copied in."""
    seed = s.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = RewardNet(backbone_from_config(student_config(teacher.backbone.config, s)), teacher.kind, seed=seed)
    if s.student_hidden is None:
        own = student.state_dict()
        student.load_state_dict({k: v for k, v in teacher.state_dict().items()
                                 if k in own and own[k].shape == v.shape}, strict=False)
    return student


def n_parameters(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


@dataclass
class DistillResult:
    student: RewardNet
    calibrator: PlattCalibrator | None
    train_cpu_s: float          # process CPU seconds of the training loop (all threads)
    train_wall_s: float
    steps: int
    final_loss: float


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def distill(teacher: RewardScorer, train: Sequence[PreferencePair], val: Sequence[PreferencePair],
            s: DistillSettings, extra_texts: Sequence[tuple[str, str]] = ()) -> DistillResult:
    """Train a student of ``teacher`` on ``train`` (+ unlabelled ``extra_texts`` (prompt, response) for the
    regression term); calibrate its margin on ``val`` (Platt)."""
    if not train:
        raise ValueError("distillation needs at least one training pair")
    train = list(train)[:s.max_train_pairs] if s.max_train_pairs else list(train)
    student = build_student(teacher.net, s)
    encoder, collator = teacher.encoder, teacher.collator
    prompts = [p.prompt for p in train]
    t_chosen = teacher.score(prompts, [p.chosen for p in train])
    t_rejected = teacher.score(prompts, [p.rejected for p in train])
    enc_c = [encoder.encode(p.prompt, p.chosen) for p in train]
    enc_r = [encoder.encode(p.prompt, p.rejected) for p in train]
    target = torch.tensor([p.target for p in train], dtype=torch.float32)
    weight = torch.tensor([p.weight for p in train], dtype=torch.float32)
    extra = list(extra_texts)
    t_extra = teacher.score([p for p, _ in extra], [r for _, r in extra]) if extra else np.zeros(0)
    enc_x = [encoder.encode(p, r) for p, r in extra]

    rng = np.random.default_rng(s.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=s.lr)
    student.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    steps, loss_value = 0, math.nan
    n_extra_per_step = math.ceil(len(extra) / max(1, math.ceil(len(train) / s.batch_size))) if extra else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        for _ in range(s.epochs):
            extra_order = rng.permutation(len(extra)) if extra else np.zeros(0, dtype=int)
            for b, idx in enumerate(_batches(len(train), s.batch_size, rng)):
                xi = extra_order[b * n_extra_per_step:(b + 1) * n_extra_per_step]
                seqs = [enc_c[i] for i in idx] + [enc_r[i] for i in idx] + [enc_x[i] for i in xi]
                batch = collator.pad(seqs)
                r = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                k = len(idx)
                r_c, r_r = r[:k], r[k:2 * k]
                teacher_r = torch.tensor(np.concatenate([t_chosen[idx], t_rejected[idx], t_extra[xi]]),
                                         dtype=torch.float32)
                loss = s.regression_weight * torch.mean((r - teacher_r) ** 2)
                if s.pair_weight:
                    loss = loss + s.pair_weight * preference_loss(r_c, r_r, target=target[idx], weight=weight[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                opt.step()
                steps, loss_value = steps + 1, float(loss.detach())
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    student.eval()
    calibrator = fit_calibrator(RewardScorer(student, teacher.tokenizer, teacher.max_length), val)
    return DistillResult(student, calibrator, train_cpu, train_wall, steps, loss_value)


def fit_calibrator(scorer: RewardScorer, pairs: Sequence[PreferencePair]) -> PlattCalibrator | None:
    """Platt scaling of the margin on ``pairs`` (both orientations, soft targets); None with fewer than 2 pairs."""
    if len(pairs) < 2:
        return None
    m = score_pairs(scorer, pairs)
    t = np.array([p.target for p in pairs])
    return PlattCalibrator().fit(np.concatenate([m, -m]), np.concatenate([t, 1 - t]))


def fidelity(scorer: RewardScorer, teacher: RewardScorer, pairs: Sequence[PreferencePair],
             calibrator: PlattCalibrator | None = None, seed: int = 0) -> dict[str, float]:
    """Accuracy, AUC, ECE (raw sigmoid, and calibrated when a calibrator is given) on ``pairs``, and the Pearson /
    Spearman correlation of the scores with the teacher's over every text of them."""
    from scipy.stats import pearsonr, spearmanr

    pairs = list(pairs)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    mine, theirs = scorer.score(prompts, responses), teacher.score(prompts, responses)
    n = len(pairs)
    margins = mine[:n] - mine[n:]
    targets = np.array([p.target for p in pairs])
    oriented = np.where(targets < 0.5, -margins, margins)
    out = {k: float(v) for k, v in evaluate_margins(oriented, seed=seed).items()}
    if calibrator is not None:
        from rlhf_assets.reward.metrics import expected_calibration_error

        flip = np.random.default_rng(seed).random(n) < 0.5  # the same orientation as evaluate_margins
        p = np.asarray(calibrator.predict(np.where(flip, -oriented, oriented)), dtype=np.float64)
        out["ece_calibrated"] = expected_calibration_error(p, np.where(flip, 0.0, 1.0))
    flat = np.std(mine) == 0 or np.std(theirs) == 0
    out["teacher_pearson"] = float("nan") if flat else float(pearsonr(mine, theirs)[0])
    out["teacher_spearman"] = float("nan") if flat else float(spearmanr(mine, theirs)[0])
    return out
