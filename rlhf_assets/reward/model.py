"""The Lightning module: Bradley–Terry training of a :class:`~rlhf_assets.reward.network.RewardNet`.

A batch holds B pairs as 2B sequences (chosen first, then rejected) that go through ONE forward pass. Logged:
``train/loss``, ``train/accuracy``, ``train/reward_mean|min|max``, ``train/margin_mean``, ``train/tokens_per_s``
(real, non-padding tokens per second of step time on this rank), ``lr`` (LearningRateMonitor), and at each
validation ``val/loss`` / ``val/accuracy`` / ``val/margin_mean`` reduced exactly over all ranks (sums, not means of
means). AdamW (no weight decay on biases and norms) with linear warm-up and linear decay, stepped per optimizer step.
RNG states (python, numpy, torch, CUDA) go into the checkpoint and come back on resume.

Under DDP each rank's loss is its weighted mean and DDP averages gradients, which equals the global weighted mean
when the ranks' weight sums are equal (always true for unit weights: the sampler gives every rank the same number
of pairs, up to one zero-weight copy in a short final batch).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from rlhf_assets.reward.config import RMConfig
from rlhf_assets.reward.loss import bt_pair_loss, pair_accuracy, preference_loss
from rlhf_assets.reward.network import RewardNet


def linear_warmup_decay(total_steps: int, warmup_steps: int):
    """LambdaLR factor: 0→1 linearly over warm-up, then 1→0 linearly at ``total_steps``."""
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class RewardModel(pl.LightningModule):
    def __init__(self, net: RewardNet, config: RMConfig):
        super().__init__()
        self.net = net
        self.config = config
        self._val_sums: torch.Tensor | None = None
        self._t_batch = 0.0
        self.tokens_seen = 0          # real tokens trained on by this rank
        self.train_step_time_s = 0.0  # wall time spent in training batches on this rank

    # scoring ------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(input_ids, attention_mask, token_type_ids)

    def _pair_rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        b = batch["target"].shape[0]
        return rewards[:b], rewards[b:]

    def _loss(self, r_c: torch.Tensor, r_r: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        target = batch["target"] if cfg.use_soft_targets else None
        weight = batch["weight"] if _weighted(cfg) else (batch["weight"] > 0).float()  # 0 = padding copy
        return preference_loss(r_c, r_r, target=target, weight=weight, margin=cfg.margin, center_coef=cfg.center_coef,
                               weight_total=_per_rank_weight_total(weight) if self.training else None)

    # training -----------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t_batch = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        r_c, r_r = self._pair_rewards(batch)
        loss = self._loss(r_c, r_r, batch)
        real = batch["weight"] > 0
        n = int(real.sum())
        with torch.no_grad():
            rewards = torch.cat([r_c[real], r_r[real]]).detach()
            acc = pair_accuracy(r_c, r_r, batch["target"])[real].mean()
            self.log_dict({
                "train/loss": loss.detach(), "train/accuracy": acc,
                "train/reward_mean": rewards.mean(), "train/reward_min": rewards.min(),
                "train/reward_max": rewards.max(), "train/margin_mean": (r_c - r_r)[real].mean(),
            }, on_step=True, on_epoch=False, prog_bar=False, batch_size=max(n, 1))
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=max(n, 1))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        dt = time.perf_counter() - self._t_batch
        tokens = int(batch["n_tokens"])
        self.tokens_seen += tokens
        self.train_step_time_s += dt
        self.log("train/tokens_per_s", tokens / max(dt, 1e-9), on_step=True, on_epoch=False)

    def on_train_end(self) -> None:
        # Throughput over all ranks: total real tokens / mean per-rank step time.
        t = torch.tensor([float(self.tokens_seen), self.train_step_time_s], dtype=torch.float64, device=self.device)
        world = self.trainer.world_size
        if world > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        self.total_tokens = int(t[0])
        self.mean_step_time_s = float(t[1]) / world

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if not gradient_clip_val:
            return
        wrapped = self.trainer.strategy.model
        if type(wrapped).__name__ == "FullyShardedDataParallel":
            wrapped.clip_grad_norm_(gradient_clip_val)  # the FSDP-correct global norm
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # validation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        # [Σ w·ℓ, Σ w, Σ correct, n pairs, Σ (r_c − r_r)] over this rank's pairs; reduced over ranks at the end.
        self._val_sums = torch.zeros(5, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        cfg = self.config
        r_c, r_r = self._pair_rewards(batch)
        target = batch["target"] if cfg.use_soft_targets else None
        real = (batch["weight"] > 0).double()
        w = batch["weight"].double() if _weighted(cfg) else real
        per_pair = bt_pair_loss(r_c - r_r - cfg.margin, target).double()
        if cfg.center_coef:
            per_pair = per_pair + cfg.center_coef * ((r_c + r_r) ** 2).double()
        acc = pair_accuracy(r_c, r_r, batch["target"]).double()
        assert self._val_sums is not None
        self._val_sums += torch.stack([(w * per_pair).sum(), w.sum(), (acc * real).sum(), real.sum(),
                                       ((r_c - r_r).double() * real).sum()])

    def on_validation_epoch_end(self) -> None:
        assert self._val_sums is not None
        sums = self._val_sums
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss_sum, w_sum, acc_sum, n, margin_sum = (float(x) for x in sums)
        self.log_dict({"val/loss": loss_sum / max(w_sum, 1e-12), "val/accuracy": acc_sum / max(n, 1.0),
                       "val/margin_mean": margin_sum / max(n, 1.0)},
                      on_step=False, on_epoch=True, sync_dist=False, prog_bar=True)
        self._val_sums = None

    # optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.config
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.effective_lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
        total = self._total_steps()
        warmup = int(round(cfg.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total, warmup))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"}}

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run, for the LR schedule.

        Computed from the datamodule's batch count instead of ``trainer.estimated_stepping_batches``: that
        property builds the train dataloader during optimizer setup, BEFORE a resumed checkpoint's loop state is
        loaded, and Lightning then never hands the saved data position to the loader.
        """
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "train_batches_per_epoch"):
            n_batches = dm.train_batches_per_epoch(trainer.world_size)
            steps = math.ceil(n_batches / trainer.accumulate_grad_batches) * max(int(trainer.max_epochs or 1), 1)
            if trainer.max_steps != -1:
                steps = min(steps, trainer.max_steps)
        else:
            steps = trainer.estimated_stepping_batches
        return int(steps) if math.isfinite(steps) and steps > 0 else 1

    # checkpoint extras ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        np_state = np.random.get_state()
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = rng
        checkpoint["reward_model"] = {"kind": self.net.kind, "config": self.config.to_dict(resolve=False)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng_states")
        if not rng:
            return
        random.setstate(_tuplify(rng["python"]))
        torch.set_rng_state(rng["torch"])
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # helpers for evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
              batch_size: int = 32) -> np.ndarray:
        """Rewards of (prompt, response) texts with this module's current weights (eval mode)."""
        from rlhf_assets.reward.artifact import RewardScorer

        return RewardScorer(self.net, tokenizer, self.config.max_length).score(prompts, responses, batch_size)


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _weighted(cfg: RMConfig) -> bool:
    """Whether the loss uses the pairs' weights: annotator reliability (use_weights), or length balancing, which
    lives in the weights (reward/data.py length_balanced)."""
    return cfg.use_weights or cfg.length_balance


def _per_rank_weight_total(weight: torch.Tensor) -> torch.Tensor | None:
    """(Σ w over all ranks) / world size under DDP, else None: DDP averages gradients over ranks, so dividing each
    rank's Σ w·loss by this gives exactly the single-process weighted mean of the global batch, even when weights
    differ between ranks (annotator-reliability weights do)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    total = weight.detach().sum().to(torch.float64)
    dist.all_reduce(total)
    return total / dist.get_world_size()
