"""PPO of the SFT policy against the calibrated reward model, with a frozen reference and a KL budget.

One step:

1. Rollout — sample one response per training prompt (policy/generation.py; each prompt's own generator, seeded
   from (seed, step, its position in the rollout)), score it with the calibrated reward model (+ ``no_eos_penalty``
   when it hit the cap), and run the policy, its value head and the frozen reference over the full sequences for
   old log-probs, old values and reference log-probs.
2. KL budget — the rollout's mean sequence KL(π‖π_ref) is measured on the policy that produced it. Over budget:
   "reject" restores the weights from before the previous update and doubles β; "stop" ends the run. Recorded.
3. Rewards — reward normalization (running mean/std of scores), then per-token −β·KL with the score on the last
   real token (ppo_core.per_token_rewards); GAE; advantage whitening; the adaptive KL controller updates β.
4. Update — ``update_epochs`` passes of shuffled minibatches (gradient accumulation over micro-batches), clipped
   surrogate + clipped value loss − entropy bonus (+ the SFT mix's NLL), gradient clipping.
5. Every ``eval_every`` steps (and at step 0, the SFT policy itself) the held-out prompts are sampled with a fixed
   seed and scored; the step with the best held-out objective (``select_by``: by default the KL-regularised
   objective PPO optimises, proxy reward − β·KL; or the proxy reward alone) whose held-out KL is within budget is
   kept.
6. A checkpoint after each ``checkpoint_every`` steps: weights, optimizer, β, reward statistics, sampling
   generator, RNG, step, history, best, the pre-update snapshot for "reject". A rerun of the same command
   resumes from it; on CPU the result is bit-identical to an uninterrupted run.

The stored artifact is the selected (best) checkpoint, not the last step.

On N processes (``torchrun``; policy/distributed.py) the rollout's prompts are split across the ranks: each samples,
scores and runs the forward passes of its share, then the ranks exchange the rollout (token ids and per-token
numbers: small next to the models), so β, the KL budget, reward normalization, GAE and advantage whitening see
the global batch, as on one process. The update shuffles the global rollout with the generator every rank advances
alike; each micro-batch is split across the ranks, each rank's loss is its rows' share of the micro-batch's token
mean (times N: DDP averages gradients), so the averaged gradient is the one-process gradient; the SFT mix is split
the same way. Every rank evaluates the held-out prompts (they would otherwise wait for rank 0); rank 0 writes the
checkpoints, metrics and the artifact. The result matches one process up to the order of float reductions, and a
checkpoint resumes on any N.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_assets.checkpoint_mirror import CheckpointMirror
from rlhf_assets.code_version import code_version
from rlhf_assets.lora import add_lora
from rlhf_assets.policy import distributed
from rlhf_assets.policy.artifacts import load_policy
from rlhf_assets.policy.config import PPOConfig
from rlhf_assets.policy.data import collate, encode_prompt, encode_response, join, left_pad
from rlhf_assets.policy.generation import sample
from rlhf_assets.policy.model import PolicyModel, response_outputs
from rlhf_assets.policy.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    ppo_loss,
    token_logprobs,
)
from rlhf_assets.policy.reward_fn import ProxyReward, fit_length_debias
from rlhf_assets.policy.runtime import (
    MetricsLog,
    adamw,
    autocast,
    device_for,
    load_checkpoint,
    make_deterministic,
    save_checkpoint,
    store_policy,
    versions,
)
from rlhf_assets.policy.sft import response_nll
from rlhf_assets.reward.artifact import load_reward_model

PPO_KIND = "ppo_policy"
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class PPOResult:
    artifact_id: str | None
    artifact_uri: str | None
    artifact_dir: str | None
    selected_step: int
    selected: dict[str, float]
    history: list[dict]
    evals: list[dict]
    events: list[dict]
    stop_reason: str | None
    resumed_from_step: int | None
    rollout_tokens_per_s: float
    train_tokens_per_s: float
    wall_time_s: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class Rollout:
    batch: Any                    # SequenceBatch
    logprobs: torch.Tensor        # [B, R] old log π
    ref_logprobs: torch.Tensor    # [B, R]
    values: torch.Tensor          # [B, R]
    entropy: torch.Tensor         # [B, R]
    scores: torch.Tensor          # [B] proxy reward (penalty included)
    ended: torch.Tensor           # [B]
    gen_tokens: int
    gen_time: float

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask

    def seq_kl(self) -> torch.Tensor:
        return ((self.logprobs - self.ref_logprobs) * self.mask).sum(-1)


class PPOTrainer:
    """Holds the models and the state that a checkpoint saves; :meth:`run` is the loop."""

    def __init__(self, cfg: PPOConfig, sft_dir: str | Path, reward_dir: str | Path, prompts: Sequence[str],
                 eval_prompts: Sequence[str], *, calibrator: Mapping[str, Any] | None = None,
                 sft_rows: Sequence[dict] = (), extra_scorers: Mapping[str, Callable] | None = None,
                 log: Callable[[str], None] | None = None, length_pairs: Sequence[dict] = ()):
        self.cfg = cfg
        self.say = log or (lambda msg: None)
        self.device = device_for()
        self.deterministic_before = make_deterministic(cfg.seed, self.device)
        self.policy, self.tok, _ = load_policy(sft_dir, self.device)
        self.ref, _, _ = load_policy(sft_dir, self.device)
        self.ref.eval().requires_grad_(False)
        if cfg.lora_rank:  # before DDP, the optimizer and any checkpoint restore; the value head stays trainable
            add_lora(self.policy.lm, cfg.lora_rank, cfg.lora_alpha, targets=cfg.lora_targets)
        self.policy.train()
        scorer = load_reward_model(reward_dir, self.device)
        self.proxy = ProxyReward(scorer, calibrator, cfg.no_eos_penalty)
        if cfg.length_debias:
            if not length_pairs:
                raise ValueError("length_debias needs the validation pairs to fit the length component on "
                                 "(--length-pairs)")
            fit = fit_length_debias(self.proxy.calibrated, [p["prompt"] for p in length_pairs for _ in (0, 1)],
                                    [x for p in length_pairs for x in (p["chosen"], p["rejected"])])
            self.proxy.length_debias = fit
            self.say(f"length-debiased reward: {fit['coef']:+.4f} per word regressed out (R² {fit['r2']:.3f}, "
                     f"{fit['n']} validation responses)")
        self.extra_scorers = dict(extra_scorers or {})
        self.prompts, self.eval_prompts = list(prompts), list(eval_prompts)
        if not self.prompts or not self.eval_prompts:
            raise ValueError("PPO needs training prompts and held-out prompts")
        self.prompt_ids = [encode_prompt(self.tok, p, cfg.max_prompt_tokens) for p in self.prompts]
        self.eval_ids = [encode_prompt(self.tok, p, cfg.max_prompt_tokens) for p in self.eval_prompts]
        self.sft_examples = [(encode_prompt(self.tok, r["prompt"], cfg.max_prompt_tokens),
                              encode_response(self.tok, r["response"], cfg.max_new_tokens)) for r in sft_rows]
        if cfg.sft_mix_share > 0 and not self.sft_examples:
            raise ValueError("sft_mix_share > 0 needs SFT examples (--sft-data)")
        self.world = distributed.world_size()
        distributed.require_equal_shares(cfg.rollout_prompts, "rollout_prompts", self.world)
        self.model = distributed.ddp(self.policy)  # what the update runs forward/backward (self.policy on 1 process)
        self.optimizer = adamw(self.policy.parameters(), cfg.lr)
        ctl = AdaptiveKLController if cfg.adaptive_kl else FixedKLController
        self.kl_ctl = ctl(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.moments = RunningMoments()
        self.gen = torch.Generator().manual_seed(cfg.seed)  # minibatch order, SFT-mix picks (alike on every rank)
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.events: list[dict] = []
        self.best: dict[str, Any] = {}
        self.rejections = 0  # rejected updates since the last update that stayed inside the budget
        self.restored = False  # the current weights were restored by a rejection (not yet updated again)
        self.prev: dict | None = None  # weights + optimizer before the latest update ("reject" restores it)
        self.gen_time = self.train_time = 0.0
        self.gen_tokens = self.train_tokens = 0

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"model": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "kl_ctl": self.kl_ctl.state_dict(), "moments": self.moments.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "step": self.step,
                "history": self.history, "evals": self.evals, "events": self.events, "best": self.best,
                "rejections": self.rejections, "restored": self.restored, "prev": self.prev,
                "timing": [self.gen_time, self.train_time, self.gen_tokens, self.train_tokens]}

    def load_state_dict(self, s: dict) -> None:
        self.policy.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.kl_ctl.load_state_dict(s["kl_ctl"])
        self.moments.load_state_dict(s["moments"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        self.step, self.rejections, self.prev = int(s["step"]), int(s["rejections"]), s["prev"]
        self.restored = bool(s["restored"])
        self.history, self.evals, self.events, self.best = s["history"], s["evals"], s["events"], s["best"]
        self.gen_time, self.train_time, self.gen_tokens, self.train_tokens = s["timing"]

    # ---------------------------------------------------------------------------------------------- pieces
    def prompt_indices(self, step: int) -> list[int]:
        """The training prompts of ``step``: consecutive slices of a permutation seeded per epoch over the prompts,
        so the data position is a function of the step alone (nothing to save for an exact resume)."""
        n, k = len(self.prompts), self.cfg.rollout_prompts
        perms: dict[int, torch.Tensor] = {}
        out = []
        for j in range(step * k, (step + 1) * k):
            epoch, pos = divmod(j, n)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
            out.append(int(perms[epoch][pos]))
        return out

    def _texts(self, samples) -> list[str]:
        out = []
        for ids, m in zip(samples.response_ids.tolist(), samples.response_mask.tolist()):
            out.append(self.tok.decode([t for t, keep in zip(ids, m) if keep], skip_special_tokens=True))
        return out

    @torch.no_grad()
    def _forward_chunks(self, model: PolicyModel, batch, with_values: bool):
        """Response log-probs (+ values, entropy) over the batch, in micro-batches."""
        mb = self.cfg.micro_batch_size
        lps, vals, ents = [], [], []
        for i in range(0, batch.input_ids.shape[0], mb):
            part = batch.rows(slice(i, i + mb))
            with autocast(self.device, self.cfg.precision):  # logits / T: the distribution sampled from
                logits, values = response_outputs(model, part, self.cfg.temperature, with_values)
            lps.append(token_logprobs(logits, part.response_ids))
            if with_values:
                vals.append(values)
                ents.append(entropy_from_logits(logits))
        cat = torch.cat
        return cat(lps), (cat(vals) if with_values else None), (cat(ents) if with_values else None)

    @torch.no_grad()
    def _sample(self, ids: list, generator: torch.Generator):
        p_ids, p_mask = left_pad(ids, self.tok.pad_token_id)
        p_ids, p_mask = p_ids.to(self.device), p_mask.to(self.device)
        self.policy.eval()
        t = time.perf_counter()
        with autocast(self.device, self.cfg.precision):
            samples = sample(self.policy.lm, p_ids, p_mask, self.cfg.max_new_tokens, self.tok.eos_token_id,
                             self.tok.pad_token_id, generator, self.cfg.temperature)
        elapsed = time.perf_counter() - t
        self.policy.train()
        return join(p_ids, p_mask, samples.response_ids, samples.response_mask), samples, elapsed

    def rollout_generators(self, positions: Sequence[int]) -> list[torch.Generator]:
        """One generator per rollout position, seeded from (seed, step, position): a prompt's sample is the same
        whichever process, and whichever other prompts, it is sampled with."""
        return [torch.Generator().manual_seed(int(np.random.SeedSequence([self.cfg.seed, self.step, int(j)])
                                                  .generate_state(1, np.uint64)[0])) for j in positions]

    def rollout(self, prompt_index: Sequence[int], positions: Sequence[int] | None = None) -> Rollout:
        """The rollout of the prompts ``prompt_index`` (at ``positions`` of the step's rollout; default 0, 1, …)."""
        positions = range(len(prompt_index)) if positions is None else positions
        ids = [self.prompt_ids[i] for i in prompt_index]
        batch, samples, gen_time = self._sample(ids, self.rollout_generators(positions))
        texts = self._texts(samples)
        scores = self.proxy([self.prompts[i] for i in prompt_index], texts, samples.ended.cpu().numpy())
        self.policy.eval()
        logprobs, values, entropy = self._forward_chunks(self.policy, batch, True)
        ref_logprobs, _, _ = self._forward_chunks(self.ref, batch, False)
        self.policy.train()
        n_tokens = int(samples.response_mask.sum())
        return Rollout(batch, logprobs, ref_logprobs, values, entropy,
                       torch.as_tensor(scores, dtype=torch.float32, device=self.device), samples.ended, n_tokens,
                       gen_time)

    def shared_rollout(self, prompt_index: Sequence[int]) -> Rollout:
        """The step's rollout: on N processes each samples its contiguous share of the prompts, then every rank
        gets all of it (re-padded to the widest share: the layout one process would have built)."""
        if self.world == 1:
            return self.rollout(prompt_index)
        positions, _ = distributed.shard(range(len(prompt_index)))
        mine = self.rollout([prompt_index[j] for j in positions.tolist()], positions.tolist())
        P = distributed.all_reduce_max(mine.batch.prompt_len, self.device)
        R = distributed.all_reduce_max(mine.mask.shape[1], self.device)
        batch = mine.batch.widened(P, R, self.tok.pad_token_id)
        wide = lambda t: torch.nn.functional.pad(t, (0, R - t.shape[1]))  # noqa: E731 - per-token numbers
        gather = distributed.all_gather_rows
        batch = type(batch)(gather(batch.input_ids), gather(batch.attention_mask), gather(batch.response_mask), P)
        return Rollout(batch, gather(wide(mine.logprobs)), gather(wide(mine.ref_logprobs)),
                       gather(wide(mine.values)), gather(wide(mine.entropy)), gather(mine.scores),
                       gather(mine.ended.to(torch.uint8)).bool(), int(batch.response_mask.sum()), mine.gen_time)

    def evaluate(self) -> dict:
        """Held-out prompts, sampled with the same seed at every evaluation; proxy reward, KL, length."""
        gen = torch.Generator().manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        ids = self.eval_ids[:self.cfg.n_eval_prompts]
        prompts = self.eval_prompts[:self.cfg.n_eval_prompts]
        batch, samples, _ = self._sample(ids, gen)
        texts = self._texts(samples)
        ended = samples.ended.cpu().numpy()
        scores = self.proxy(prompts, texts, ended)
        self.policy.eval()
        lp, _, _ = self._forward_chunks(self.policy, batch, False)
        ref_lp, _, _ = self._forward_chunks(self.ref, batch, False)
        self.policy.train()
        kl = float(((lp - ref_lp) * batch.response_mask).sum(-1).mean())
        beta = self.kl_ctl.value
        row = {"step": self.step, "proxy_reward": float(np.mean(scores)), "kl": kl, "sqrt_kl": math.sqrt(max(kl, 0)),
               "beta": beta, "objective": float(np.mean(scores)) - beta * kl,
               "response_length": float(batch.response_mask.sum(-1).float().mean()),
               "no_eos_share": float(1 - ended.mean())}
        for name, scorer in self.extra_scorers.items():
            row[f"{name}_reward"] = float(np.mean(scorer(prompts, texts)))
        return row

    def _minibatch_loss(self, ro: Rollout, adv: torch.Tensor, ret: torch.Tensor, micro: torch.Tensor,
                        weight: float) -> dict:
        """Backward of one micro-batch's loss × ``weight``; on N processes of this rank's share of it (its rows'
        token sums over the micro-batch's token count, × N for DDP's average). Returns the parts (shares)."""
        cfg = self.cfg
        idx, share, n_tokens = micro, 1.0, None
        if self.world > 1:
            idx, share = distributed.shard(micro)
            n_tokens = float(ro.mask[micro].sum())
        b = ro.batch.rows(idx)
        with autocast(self.device, cfg.precision):  # logits / T: the distribution sampled from
            logits, values = response_outputs(self.model, b, cfg.temperature, with_values=True)
        new_lp = token_logprobs(logits, b.response_ids)
        parts = ppo_loss(new_lp, ro.logprobs[idx], adv[idx], values, ro.values[idx], ret[idx],
                         entropy_from_logits(logits), ro.mask[idx], cfg.clip_coef, cfg.clip_vloss,
                         cfg.vf_coef, cfg.ent_coef, n_tokens=n_tokens)
        (parts.loss * (weight * share * self.world)).backward()
        self.train_tokens += int(b.attention_mask.sum()) * int(share)
        return {"pg_loss": float(parts.pg_loss) * share, "value_loss": float(parts.vf_loss) * share,
                "clip_frac": float(parts.clip_frac) * share, "approx_kl": float(parts.approx_kl) * share,
                "value_clip_frac": float(parts.value_clip_frac) * share}

    def _sft_mix_loss(self, n: int) -> float:
        """PPO-ptx: the NLL of ``n`` SFT examples joins the minibatch's loss (guards against reward hacking). On N
        processes the picks are split like a micro-batch; returns this rank's share of the NLL."""
        pick = torch.randint(len(self.sft_examples), (n,), generator=self.gen).tolist()
        rows, share, n_tokens = pick, 1.0, None
        if self.world > 1:
            mine, share = distributed.shard(pick)
            rows, n_tokens = mine.tolist(), float(sum(len(self.sft_examples[i][1]) for i in pick))
        batch = collate([self.sft_examples[i][0] for i in rows], [self.sft_examples[i][1] for i in rows],
                        self.tok.pad_token_id)
        nll = response_nll(self.model, batch, self.device, self.cfg.precision, n_tokens)  # the SFT loss itself
        (nll * (share * self.world)).backward()
        return nll.item() * share

    def update(self, ro: Rollout) -> dict:
        cfg = self.cfg
        scores = ro.scores
        if cfg.norm_reward:  # reward normalization: running mean/std of the scores
            self.moments.update(scores)
            scores = self.moments.normalize(scores)
        rewards, _ = per_token_rewards(scores, ro.logprobs, ro.ref_logprobs, ro.mask, self.kl_ctl.value)
        adv, ret = compute_gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.gae_lambda)
        if cfg.norm_adv:
            adv = masked_whiten(adv, ro.mask)
        B = ro.batch.input_ids.shape[0]
        stats: dict[str, list[float]] = {}
        t, tokens_before = time.perf_counter(), self.train_tokens
        for _ in range(cfg.update_epochs):
            order = torch.randperm(B, generator=self.gen).to(self.device)
            for s in range(0, B, cfg.minibatch_size):
                mb = order[s:s + cfg.minibatch_size]
                self.optimizer.zero_grad(set_to_none=True)
                # Gradient accumulation; on N processes DDP all-reduces once, at the minibatch's last backward.
                if cfg.sft_mix_share > 0:
                    with distributed.no_sync(self.model, True):
                        stats.setdefault("sft_nll", []).append(
                            self._sft_mix_loss(max(1, math.ceil(cfg.sft_mix_share * mb.numel()))))
                starts = range(0, mb.numel(), cfg.micro_batch_size)
                for m in starts:
                    micro = mb[m:m + cfg.micro_batch_size]
                    with distributed.no_sync(self.model, m != starts[-1]):
                        for k, v in self._minibatch_loss(ro, adv, ret, micro, micro.numel() / mb.numel()).items():
                            stats.setdefault(k, []).append(v)
                gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                stats.setdefault("grad_norm", []).append(float(gn))
                self.optimizer.step()
        self.train_time += time.perf_counter() - t
        if self.world > 1:  # the ranks' shares of each micro-batch's parts sum to its parts; grad_norm is global
            for k, v in stats.items():
                if k != "grad_norm":
                    stats[k] = distributed.all_reduce_sum(torch.tensor(v, device=self.device)).tolist()
            tokens = torch.tensor([self.train_tokens - tokens_before], device=self.device)
            self.train_tokens = tokens_before + int(distributed.all_reduce_sum(tokens))
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out["explained_variance"] = explained_variance(ro.values, ret, ro.mask)
        return out

    # ---------------------------------------------------------------------------------------------- loop
    def run(self, ckpt_path: Path, metrics_path: Path, mirror: CheckpointMirror | None = None) -> str | None:
        cfg = self.cfg
        metrics_log = MetricsLog(metrics_path, self.history, write=distributed.is_main())
        if self.step == 0 and not self.evals:
            self._record_eval(self.evaluate())
        stop_reason = None
        while self.step < cfg.steps:
            ro = self.shared_rollout(self.prompt_indices(self.step))
            self.gen_time += ro.gen_time
            self.gen_tokens += ro.gen_tokens
            seq_kl = ro.seq_kl()
            kl = float(seq_kl.mean())
            row = {"step": self.step + 1, "proxy_reward": float(ro.scores.mean()), "kl": kl,
                   "kl_per_token": float(masked_mean(ro.logprobs - ro.ref_logprobs, ro.mask)),
                   "beta": self.kl_ctl.value, "entropy": float(masked_mean(ro.entropy, ro.mask)),
                   "response_length": float(ro.mask.sum(-1).float().mean()),
                   "no_eos_share": float(1 - ro.ended.float().mean())}
            if not math.isfinite(kl) or kl > cfg.kl_budget:
                stop_reason = self._over_budget(kl, row)
                if stop_reason is not None:
                    break
            else:
                if not self.restored:  # an update survived its next rollout: the run is back inside the budget
                    self.rejections = 0
                self.restored = False
                self.prev = {"model": copy.deepcopy(self.policy.state_dict()),
                             "optimizer": copy.deepcopy(self.optimizer.state_dict())}
                row.update(self.update(ro))
                self.kl_ctl.update(kl, cfg.rollout_prompts)  # adaptive KL controller
            self.step += 1
            row["rollout_tokens_per_s"] = self.gen_tokens / self.gen_time if self.gen_time else 0.0
            row["train_tokens_per_s"] = self.train_tokens / self.train_time if self.train_time else 0.0
            metrics_log.append(row)
            self.say(f"step {self.step}/{cfg.steps} reward {row['proxy_reward']:+.3f} kl {kl:.3f} "
                     f"β {self.kl_ctl.value:.4f} len {row['response_length']:.1f}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                self._record_eval(self.evaluate())
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                save_checkpoint(ckpt_path, self.state_dict(), mirror)
        return stop_reason

    def _over_budget(self, kl: float, row: dict) -> str | None:
        """A rollout whose KL is over ``kl_budget`` (or not finite), before any update on it. Returns the reason to
        stop, or None when the run goes on.

        Stops (event ``stop``) when ``on_kl_over_budget`` is ``"stop"``, when there is no earlier update to undo, or
        after ``max_rejections`` rejected updates in a row. Otherwise rejects (event ``reject``): the weights and the
        optimizer go back to before the previous update, β doubles, and ``row`` is marked ``rejected``; the step is
        spent without an update.
        """
        cfg = self.cfg
        reason = (f"step {self.step + 1}: rollout KL {kl:.3f} exceeds the budget {cfg.kl_budget}"
                  if math.isfinite(kl) else f"step {self.step + 1}: KL is not finite")
        if cfg.on_kl_over_budget == "stop" or self.prev is None or self.rejections >= cfg.max_rejections:
            stop_reason = reason + ("; stopping" if cfg.on_kl_over_budget == "stop" else
                                    f"; stopping after {self.rejections} rejected updates")
            self.events.append({"step": self.step + 1, "action": "stop", "reason": stop_reason})
            self.say(stop_reason)
            return stop_reason
        self.policy.load_state_dict(self.prev["model"])
        self.optimizer.load_state_dict(self.prev["optimizer"])
        self.kl_ctl.value *= 2.0
        self.rejections += 1
        self.restored = True
        msg = f"{reason}; update rejected, weights restored, β doubled to {self.kl_ctl.value:.4g}"
        self.events.append({"step": self.step + 1, "action": "reject", "reason": msg})
        self.say(msg)
        row["rejected"] = True
        return None

    def _record_eval(self, row: dict) -> None:
        self.evals.append(row)
        key = self.cfg.select_by
        within = row["kl"] <= self.cfg.kl_budget and math.isfinite(row[key])
        if within and (not self.best or row[key] > self.best[key]):
            self.best = {**row, "model": copy.deepcopy(self.policy.state_dict())}
        self.say(f"eval @ {row['step']}: held-out reward {row['proxy_reward']:+.3f} kl {row['kl']:.3f}"
                 + (" (best)" if self.best.get("step") == row["step"] else ""))


def train_ppo(config: PPOConfig, sft_dir: str | Path, reward_dir: str | Path, prompts: Sequence[str],
              eval_prompts: Sequence[str], out_dir: str | Path, *, calibrator: Mapping[str, Any] | None = None,
              sft_rows: Sequence[dict] = (), store_root: str | None = None, dataset_id: str | None = None,
              parent_ids: Sequence[str] = (), extra_scorers: Mapping[str, Callable] | None = None,
              log: Callable[[str], None] | None = None, store: bool = True,
              checkpoints: CheckpointMirror | None = None, length_pairs: Sequence[dict] = ()) -> PPOResult:
    """Run PPO (resuming from ``out_dir/checkpoints/last.pt`` when present, else from the one ``checkpoints``, the
    storage root's mirror, holds) and store the selected checkpoint."""
    t0 = time.perf_counter()
    cfg = config.resolved()
    work = Path(out_dir)
    trainer = PPOTrainer(cfg, sft_dir, reward_dir, prompts, eval_prompts, calibrator=calibrator, sft_rows=sft_rows,
                         extra_scorers=extra_scorers, log=log, length_pairs=length_pairs)
    ckpt_path = work / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt_path, checkpoints)
    resumed_from = None
    if state is not None:
        trainer.load_state_dict(state)
        resumed_from = trainer.step
        trainer.say(f"resuming from step {resumed_from} ({ckpt_path})")
    if trainer.step >= cfg.steps or (trainer.events and trainer.events[-1]["action"] == "stop"):
        stop_reason = trainer.events[-1]["reason"] if trainer.events and trainer.events[-1]["action"] == "stop" else None
    else:
        stop_reason = trainer.run(ckpt_path, work / "metrics.jsonl", checkpoints)
        if stop_reason is not None:
            save_checkpoint(ckpt_path, trainer.state_dict(), checkpoints)
    if not trainer.best:
        raise ValueError("no held-out evaluation was finite and inside the KL budget (not even the SFT policy's at "
                         "step 0): check the reward model's scores for NaN")
    best = dict(trainer.best)
    trainer.policy.load_state_dict(best.pop("model"))
    rollout_tps = trainer.gen_tokens / trainer.gen_time if trainer.gen_time else 0.0
    train_tps = trainer.train_tokens / trainer.train_time if trainer.train_time else 0.0
    result = PPOResult(None, None, None, int(best["step"]), best, trainer.history, trainer.evals, trainer.events,
                       stop_reason, resumed_from, rollout_tps, train_tps, 0.0)
    if store and distributed.is_main():
        manifest = {
            "kind": PPO_KIND, "stage": "ppo", "dataset_id": dataset_id, "code_version": code_version(),
            "config": cfg.to_dict(), "seed": cfg.seed, "parent_ids": list(parent_ids),
            "metrics": {f"selected_{k}": v for k, v in best.items() if isinstance(v, (int, float))},
            "selected_step": int(best["step"]), "stop_reason": stop_reason, "events": trainer.events,
            "length_debias": trainer.proxy.length_debias,
            "evals": trainer.evals, "versions": versions(),
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "run": {"resumed_from_step": resumed_from, "rollout_tokens_per_s": round(rollout_tps, 1),
                    "train_tokens_per_s": round(train_tps, 1), "host": platform.node(), "work_dir": str(work)},
        }
        st, ref = store_policy(trainer.policy, trainer.tok, "ppo", cfg.to_dict(), manifest, store_root, work)
        result.artifact_id, result.artifact_uri, result.artifact_dir = ref.id, ref.uri, str(st.get(ref.id))
        result.manifest = st.manifest(ref.id)
        trainer.say(f"artifact {ref.id} (step {result.selected_step}) at {ref.uri}")
    distributed.barrier()  # the other ranks end once the artifact is stored
    result.wall_time_s = round(time.perf_counter() - t0, 3)
    torch.use_deterministic_algorithms(trainer.deterministic_before)
    return result
