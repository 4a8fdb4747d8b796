"""Train a Bradley–Terry reward model with Lightning and store it as a content-addressed artifact.

``train_reward_model(config, train_pairs, val_pairs, work_dir, ...)``:

1. seeds everything (``seed_everything(seed, workers=True)``; on CPU also ``torch.use_deterministic_algorithms``),
   builds the preset's network, reads and tokenises the pairs (prompt cut from the left; truncations counted);
2. fits with a Lightning ``Trainer``: precision, gradient accumulation and clipping, EarlyStopping on
   ``val/loss``, two ModelCheckpoints in ``work_dir/checkpoints`` — ``best.ckpt`` (lowest val loss) and
   ``last.ckpt`` (at every validation and every ``checkpoint_every_n_steps`` optimizer steps) — CSV and
   TensorBoard logs in ``work_dir/logs`` and ``work_dir/tensorboard``, LearningRateMonitor, a progress bar only
   on a TTY. Strategies: one device, ``ddp`` (gloo on CPU, NCCL on GPU; Lightning launches the other ranks, or
   picks up ``torchrun``'s environment), ``fsdp`` (transformer blocks as wrap units, full state dict
   checkpoints; gradient clipping through FSDP's own ``clip_grad_norm_``);
3. RESUMES when ``work_dir/checkpoints/last.ckpt`` exists: weights, optimizer, scheduler, step/epoch counters,
   callback states, RNG states and the data position (the train dataloader is resumable) come back, so an
   interrupted run ends with the same weights as an uninterrupted one. The run's config and data hashes are kept
   in ``work_dir/run.json``; resuming with different ones is refused. With a checkpoint mirror
   (rlhf_assets/checkpoint_mirror.py), rank 0 uploads ``run.json``, ``best.ckpt`` and ``last.ckpt`` to the storage
   root after every checkpoint (MirroredCheckpointIO), and a work directory without ``last.ckpt`` is first filled
   from there;
4. on rank 0 only: loads the best checkpoint's weights (the last ones when there was no validation), evaluates
   on the val pairs (accuracy, AUC, ECE, log-loss) and on up to ``TRAIN_EVAL_MAX_PAIRS`` train pairs, and writes
   the artifact (safetensors + config + tokenizer + manifest) into the store. Other ranks return ``None``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO

from rlhf_assets.checkpoint_mirror import CheckpointMirror
from rlhf_assets.code_version import code_version
from rlhf_assets.hf_offline import set_offline
from rlhf_assets.registry.artifacts import ArtifactStore, file_sha256
from rlhf_assets.reward.artifact import RewardScorer, save_reward_model
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.data import PairEncoder, PreparedData, length_balanced, make_loader, read_pairs
from rlhf_assets.reward.evaluate import evaluate_pairs
from rlhf_assets.reward.model import RewardModel
from rlhf_assets.reward.network import RewardNet, build_reward_net, transformer_block_classes
from rlhf_assets.storage import atomic_write_local, storage_from_env
from rlhf_assets.training_process import rank

ARTIFACT_KIND = "reward_model"
TRAIN_EVAL_MAX_PAIRS = 2000
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
RUN_FILE = "run.json"

LogFn = Callable[[str], None]


@dataclass
class TrainResult:
    """What a training run produced (rank 0)."""

    artifact_id: str
    artifact_uri: str
    artifact_dir: str                 # local directory of the artifact (a cache copy for s3 stores)
    metrics: dict[str, float]         # val_* and train_* evaluation metrics, best val loss
    n_truncated: int                  # pairs (train + val) where prompt or response was cut
    truncation: dict[str, Any]        # per split: n_pairs, n_truncated_pairs, n_prompt_truncated, ...
    global_step: int
    epochs_completed: int
    selected_checkpoint: str          # "best" or "last"
    resumed_from_step: int | None  # None for a fresh run
    tokens_per_s: float               # real (non-padding) tokens per second of training step time, all ranks
    wall_time_s: float
    dataset_id: str | None
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("manifest")
        return out


def _progress_callbacks(enabled: bool) -> list:
    if not enabled:
        return []
    import importlib.util

    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    return [RichProgressBar() if importlib.util.find_spec("rich") else TQDMProgressBar()]


def build_strategy(config: RMConfig, accelerator: str, net: RewardNet | None = None) -> Any:
    """The Lightning strategy object for ``config.strategy``."""
    from datetime import timedelta

    if config.strategy == "auto":
        return "auto"
    backend = "nccl" if accelerator == "gpu" else "gloo"
    if config.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=backend, find_unused_parameters=False, timeout=timedelta(minutes=30))
    from lightning.pytorch.strategies import FSDPStrategy

    blocks = transformer_block_classes(net.backbone) if net is not None else set()
    return FSDPStrategy(process_group_backend=backend, auto_wrap_policy=blocks or None, sharding_strategy="FULL_SHARD",
                        state_dict_type="full", limit_all_gathers=True, use_orig_params=True,
                        timeout=timedelta(minutes=30))


def prepare_data(config: RMConfig, tokenizer: Any, kind: str, train_path: str | os.PathLike[str],
                 val_path: str | os.PathLike[str]) -> PreparedData:
    encoder = PairEncoder(tokenizer, config.max_length, kind)
    train_pairs, val_pairs, extra = read_pairs(train_path), read_pairs(val_path), {}
    if config.length_balance:  # validation too: early stopping on a length-biased loss would reward the bias
        train_pairs, extra["length_balance_train"] = length_balanced(train_pairs, keep_weights=config.use_weights)
        val_pairs, extra["length_balance_val"] = length_balanced(val_pairs, keep_weights=config.use_weights)
    train, train_stats = encoder.encode_pairs(train_pairs)
    val, val_stats = encoder.encode_pairs(val_pairs)
    return PreparedData(train, val, train_stats, val_stats, extra)


class RewardDataModule(pl.LightningDataModule):
    """Train/val loaders, built when the trainer knows this process's rank and the world size."""

    def __init__(self, data: PreparedData, config: RMConfig, pad_id: int, padding_side: str):
        super().__init__()
        self.data, self.config, self.pad_id, self.padding_side = data, config, pad_id, padding_side

    def _loader(self, pairs, batch_size: int, shuffle: bool):
        cfg = self.config
        return make_loader(pairs, batch_size=batch_size, pad_id=self.pad_id, padding_side=self.padding_side,
                           world_size=self.trainer.world_size, rank=self.trainer.global_rank, seed=cfg.seed,
                           shuffle=shuffle, group_by_length=cfg.length_grouping, mega_batch_mult=cfg.mega_batch_mult,
                           num_workers=cfg.num_workers)

    def train_batches_per_epoch(self, world_size: int) -> int:
        return math.ceil(len(self.data.train) / (self.config.batch_size * world_size))

    def train_dataloader(self):
        return self._loader(self.data.train, self.config.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.data.val, self.config.effective_eval_batch_size, shuffle=False)


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N optimizer steps — except on a step that a validation follows.

    Lightning does not re-run a validation when it resumes from a checkpoint taken at the end of the batch just
    before that validation; the validation-end checkpoint written right after is the one to resume from. Skipping
    the step save there keeps an interrupted run identical to an uninterrupted one.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        try:
            loop = trainer.fit_loop
            if trainer.enable_validation and loop.epoch_loop._should_check_val_fx(loop._data_fetcher):
                return
        except Exception:  # noqa: BLE001 - private Lightning API; fall back to the plain behaviour
            pass
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class MirroredCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, then an upload of the run's checkpoint files to the storage root's mirror.
    Lightning calls it on global rank 0 only, after the file is written and before the other ranks go on."""

    def __init__(self, mirror: CheckpointMirror, files: list[Path]):
        super().__init__()
        self.mirror, self.files = mirror, files

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        self.mirror.push(self.files)


class ProgressLog(Callback):
    """One line per ``every_n_steps`` optimizer steps and per validation, sent to ``log`` (rank 0 only)."""

    def __init__(self, log: LogFn, every_n_steps: int):
        self._say, self.every_n_steps = log, every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step and step % self.every_n_steps == 0 and \
                (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            m = trainer.callback_metrics
            self._say(f"step {step} epoch {trainer.current_epoch} loss {float(m.get('train/loss', float('nan'))):.4f} "
                     f"acc {float(m.get('train/accuracy', float('nan'))):.3f}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            m = trainer.callback_metrics
            self._say(f"validation at step {trainer.global_step}: "
                     f"val/loss {float(m.get('val/loss', float('nan'))):.4f} "
                     f"val/accuracy {float(m.get('val/accuracy', float('nan'))):.3f}")


def _check_run_file(work_dir: Path, run_info: dict[str, Any], resuming: bool) -> None:
    path = work_dir / RUN_FILE
    if resuming and path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(run_info) if previous.get(k) != run_info.get(k))
        if changed:
            detail = "; ".join(f"{k}: {previous.get(k)!r} -> {run_info.get(k)!r}" for k in changed
                               if k != "config") or ""
            if "config" in changed:
                a, b = previous.get("config", {}), run_info.get("config", {})
                detail = "; ".join([f"config.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                                    if a.get(k) != b.get(k)] + ([detail] if detail else []))
            raise ValueError(f"{work_dir} holds a checkpoint of a different run ({detail}); resume with the same "
                             f"config and data, or use a fresh --out directory")
    if rank() == 0:
        atomic_write_local(path, (json.dumps(run_info, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _peek_step(ckpt: Path) -> int:
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read the checkpoint {ckpt} to resume from ({exc}); move it away to start over"
                         ) from exc
    return int(state.get("global_step", 0))


def _load_net_weights(net: RewardNet, ckpt: Path) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "net."
    net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def _versions() -> dict[str, str]:
    import lightning
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "transformers": transformers.__version__}


def train_reward_model(config: RMConfig, train_pairs_path: str | os.PathLike[str],
                       val_pairs_path: str | os.PathLike[str], work_dir: str | os.PathLike[str],
                       store_root: str | None = None, dataset_id: str | None = None,
                       parent_ids: Sequence[str] = (), progress: bool = True,
                       log: LogFn | None = None, artifact_kind: str = ARTIFACT_KIND,
                       checkpoints: CheckpointMirror | None = None) -> TrainResult | None:
    """Fit, evaluate and store a reward model; returns the result on rank 0 and ``None`` on other ranks.

    ``artifact_kind`` names the artifact's role in the store (``judge_reward_model`` for the release's independent
    judge), so ``latest`` reward model never resolves to a judge. ``checkpoints``: the storage root's mirror of the
    work directory's checkpoints — uploaded after every checkpoint (rank 0), and the resume point when the work
    directory holds none (a fresh machine).

    Process-wide torch settings changed for the run (deterministic algorithms) are restored afterwards, so an
    in-process caller (a test, an in-process Dagster step) is left as it was.
    """
    set_offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(config, train_pairs_path, val_pairs_path, work_dir, store_root, dataset_id, parent_ids,
                      progress, log, artifact_kind, checkpoints)
    finally:
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])


def _train(config: RMConfig, train_pairs_path: str | os.PathLike[str], val_pairs_path: str | os.PathLike[str],
           work_dir: str | os.PathLike[str], store_root: str | None, dataset_id: str | None,
           parent_ids: Sequence[str], progress: bool, log: LogFn | None,
           artifact_kind: str = ARTIFACT_KIND, checkpoints: CheckpointMirror | None = None) -> TrainResult | None:
    say: LogFn = log or (lambda msg: None)
    t0 = time.perf_counter()
    cfg = config.resolved()
    accelerator = cfg.resolved_accelerator()
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt_dir = work / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CKPT
    # What a resume needs, the file that says "a checkpoint is here" last. Every rank restores what it lacks (the
    # same pointer: nothing is pushed before training starts; the files are renamed into place whole).
    mirrored = [work / RUN_FILE, ckpt_dir / BEST_CKPT, last]
    if checkpoints is not None:
        checkpoints.restore(mirrored)
    resuming = last.exists()

    train_sha, val_sha = file_sha256(train_pairs_path), file_sha256(val_pairs_path)
    run_info = {"config": cfg.to_dict(), "train_sha256": train_sha, "val_sha256": val_sha,
                "dataset_id": dataset_id, "parent_ids": list(parent_ids)}
    _check_run_file(work, run_info, resuming)
    resumed_from = _peek_step(last) if resuming else None
    if resuming:
        say(f"resuming from {last} (step {resumed_from})")

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    net, tokenizer = build_reward_net(cfg)
    data = prepare_data(cfg, tokenizer, net.kind, train_pairs_path, val_pairs_path)
    say(f"{data.train_stats.n_pairs} train / {data.val_stats.n_pairs} val pairs; "
        f"{data.n_truncated} truncated to {cfg.max_length} tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    padding_side = getattr(tokenizer, "padding_side", "right") or "right"
    datamodule = RewardDataModule(data, cfg, pad_id, padding_side)
    module = RewardModel(net, cfg)

    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                              auto_insert_metric_name=False, enable_version_counter=False,
                              save_on_train_epoch_end=False)
    # last.ckpt after every validation, and (a second writer of the same file) every N optimizer steps.
    last_cbs = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                enable_version_counter=False, save_on_train_epoch_end=False)]
    if cfg.checkpoint_every_n_steps:
        last_cbs.append(StepCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                       every_n_train_steps=cfg.checkpoint_every_n_steps,
                                       enable_version_counter=False, save_on_train_epoch_end=False))
    callbacks: list[Any] = [LearningRateMonitor(logging_interval="step"), best_cb, *last_cbs]
    if cfg.early_stopping_patience > 0:
        callbacks.insert(0, EarlyStopping(monitor="val/loss", mode="min", patience=cfg.early_stopping_patience,
                                          check_on_train_epoch_end=False))
    if log is not None:
        callbacks.append(ProgressLog(say, cfg.log_every_n_steps))
    show_bar = bool(progress) and sys.stdout.isatty()
    callbacks += _progress_callbacks(show_bar)
    loggers: list[Any] = [CSVLogger(save_dir=work, name="logs")]
    try:
        loggers.append(TensorBoardLogger(save_dir=work, name="tensorboard", default_hp_metric=False))
    except ModuleNotFoundError:
        pass

    trainer = pl.Trainer(
        accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg, accelerator, net), precision=cfg.precision,
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val, deterministic=bool(cfg.deterministic),
        val_check_interval=cfg.lightning_val_check_interval, log_every_n_steps=cfg.log_every_n_steps,
        callbacks=callbacks, logger=loggers, default_root_dir=work, use_distributed_sampler=False,
        enable_progress_bar=show_bar, enable_model_summary=False,
        plugins=[MirroredCheckpointIO(checkpoints, mirrored)] if checkpoints is not None else None,
    )
    fit_t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resuming else None)
    fit_wall = time.perf_counter() - fit_t0
    if not trainer.is_global_zero:
        return None

    # The weights that become the artifact: best validation loss, else the final ones.
    best_path = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    if cfg.strategy == "fsdp":
        net_out, _ = build_reward_net(cfg)
        _load_net_weights(net_out, best_path if best_path and best_path.exists() else last)
        selected = "best" if best_path and best_path.exists() else "last"
    else:
        net_out = module.net
        selected = "last"
        if best_path is not None and best_path.exists():
            _load_net_weights(net_out, best_path)
            selected = "best"
    device = "cuda" if accelerator == "gpu" and torch.cuda.is_available() else "cpu"
    net_out.to(device).eval()
    scorer = RewardScorer(net_out, tokenizer, cfg.max_length, device)
    val_metrics = evaluate_pairs(scorer, val_pairs_path, cfg.effective_eval_batch_size, seed=cfg.seed)
    train_pairs = read_pairs(train_pairs_path)
    if len(train_pairs) > TRAIN_EVAL_MAX_PAIRS:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train_pairs), TRAIN_EVAL_MAX_PAIRS, replace=False))
        train_pairs = [train_pairs[i] for i in keep]
    train_metrics = evaluate_pairs(scorer, train_pairs, cfg.effective_eval_batch_size, seed=cfg.seed)
    best_score = best_cb.best_model_score
    metrics: dict[str, float] = {f"val_{k}": v for k, v in val_metrics.items()}
    metrics.update({f"train_{k}": v for k, v in train_metrics.items()})
    metrics["val_loss_best"] = float(best_score) if best_score is not None else float("nan")
    say(f"val: accuracy {val_metrics['accuracy']:.3f} auc {val_metrics['auc']:.3f} "
        f"ece {val_metrics['ece']:.3f} log_loss {val_metrics['log_loss']:.4f} ({selected} weights)")

    total_tokens = getattr(module, "total_tokens", module.tokens_seen)
    step_time = getattr(module, "mean_step_time_s", module.train_step_time_s)
    tokens_per_s = float(total_tokens / step_time) if step_time > 0 else 0.0
    truncation = {"train": data.train_stats.as_dict(), "val": data.val_stats.as_dict()}
    n_params = sum(p.numel() for p in net_out.parameters())
    early_stopped = any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks)
    manifest = {
        "kind": artifact_kind,
        "dataset_id": dataset_id,
        "code_version": code_version(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "metrics": metrics,
        "parent_ids": list(parent_ids),
        "n_truncated": data.n_truncated,
        "truncation": truncation,
        "data": {"train_sha256": train_sha, "val_sha256": val_sha, "n_train": data.train_stats.n_pairs,
                 "n_val": data.val_stats.n_pairs, **data.extra},  # length_balance_*: the groups' weights, factors
        "model": {"preset": cfg.preset, "kind": net_out.kind, "model_type": net_out.backbone.config.model_type,
                  "n_parameters": int(n_params), "selected_checkpoint": selected,
                  "n_trained_parameters": int(sum(p.numel() for p in module.net.parameters() if p.requires_grad)),
                  "lora_rank": cfg.lora_rank},
        "training": {"global_step": int(trainer.global_step), "epochs_completed": int(trainer.current_epoch),
                     "early_stopped": bool(early_stopped)},
        "versions": _versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "run": {"wall_time_s": round(time.perf_counter() - t0, 3), "fit_wall_time_s": round(fit_wall, 3),
                "tokens_per_s": round(tokens_per_s, 1), "tokens_trained": int(total_tokens),
                "resumed_from_step": resumed_from, "world_size": int(trainer.world_size),
                "work_dir": str(work), "host": platform.node()},
    }
    store = ArtifactStore(storage_from_env(store_root))
    with tempfile.TemporaryDirectory(dir=work, prefix=".export-") as tmp:
        payload = save_reward_model(net_out, tokenizer, cfg, Path(tmp) / "payload")
        ref = store.put_dir(payload, kind=artifact_kind, manifest=manifest)
    say(f"artifact {ref.id} at {ref.uri}")
    stored = store.manifest(ref.id)
    return TrainResult(
        artifact_id=ref.id, artifact_uri=ref.uri, artifact_dir=str(store.get(ref.id)), metrics=metrics,
        n_truncated=data.n_truncated, truncation=truncation, global_step=int(trainer.global_step),
        epochs_completed=int(trainer.current_epoch), selected_checkpoint=selected, resumed_from_step=resumed_from,
        tokens_per_s=tokens_per_s, wall_time_s=round(time.perf_counter() - t0, 3), dataset_id=dataset_id,
        manifest=stored,
    )
