"""Sequence-level off-policy evaluation of a target policy on a log of the behaviour policy's responses.

The pieces :mod:`.ope` needs, computed from a validated log (:mod:`.logged`) and a target policy:

- :func:`target_logprobs` — log π_t(response | prompt) of every logged response, teacher-forced on the SAME token
  ids and the same (already truncated, logged) prompt ids, at the target's serving temperature. Importance weights
  compare two probabilities of one token sequence, so the policies must share a tokenizer: this is checked (the
  target's tokenizer must decode the logged ids to the logged text, and, when the behaviour tokenizer is given,
  have the same vocabulary) and a mismatch is an error, never a silently wrong weight.
- :func:`direct_method_baseline` — the doubly robust baseline v̂(x): the mean calibrated reward of a few on-policy
  target samples per prompt.
- :func:`behavior_mixture` — when the log mixes several behaviour policies (production and a canary), the
  behaviour density of multiple importance sampling, log q = log Σ_j s_j π_j(y|x): every policy teacher-forced on
  every row at its own serving temperature, s_j its share of the rows, and each policy's rescoring of its own rows
  checked against the logged ``behavior_logprob`` (a mismatch means the wrong artifact for that id, and makes the
  estimate unreliable).
- :func:`evaluate_target` — the whole report the ``ope_report`` asset publishes: the target's estimated value,
  the behaviour policy's value (the mean logged reward; on a mixed log, the baseline's, below), the uplift with
  its paired-bootstrap interval, ESS, k̂, a weight summary, the reliability verdict; :func:`weights_histogram_png`
  and :func:`markdown_report` render it.

The baseline of a mixed log. The uplift is against ``baseline_policy_id`` (production), and its value is
estimated by SNIS over ALL rows with weights π_b / q, not as the mean of its own rows (reported beside it as
``behavior.own_rows``). Both are consistent; the weighted one is the sound comparison because it is computed on
the same rows as the target's estimate, so the paired bootstrap cancels what the two share (which prompts were
drawn), its weights are bounded by 1/s_b (≈ 1.1 for a 90% production share: no tail), and on a one-policy log it
is exactly the mean logged reward of the single-behaviour path. The bootstrap resamples rows without keeping the
policies' counts fixed, which makes the intervals slightly conservative.

A note on the doubly robust estimators here. The logged ``reward`` IS the calibrated reward-model score, and the DR
outcome model q̂(x, y) is that same reward model, so q̂ = r on every logged row: the correction term Σ w·(r − q̂)
vanishes and DR/SNDR reduce to the direct method, mean(v̂) — an on-policy Monte-Carlo estimate whose only error is
the finite number of target samples (``dm_samples``), and whose cost is generating them. It is the most accurate
estimate of the target's RM value, but it does not *use* the importance weights; the weights still decide
reliability (a target whose weights have a heavy tail is far from the logged traffic, and the gate should not act
on an RM-only number there). The report therefore also carries the pure importance-sampling estimate
(``snis_value``) as an independent cross-check.

Human outcomes (``outcome="human"``). Where the log carries ``human_label`` (audits), the outcome is the label, on
the labelled rows only, and the DR model is the reward model mapped onto the label's scale by a least-squares line
fitted over those rows (:func:`.ope.linear_outcome_map`): q̂ = a + b·r for the logged response, v̂ = a + b·(mean RM
score of the target's samples) — the mean of a linear map is the map of the mean. Now q̂ ≠ the outcome and DR does
its usual job: the map carries what the RM knows (even a negative slope, when humans disagree with it), the
weighted residuals h − q̂ correct what it misses. Assumes the labelled rows are a random subset of the log (audit
sampling independent of the response); the line is fitted in-sample (2 parameters on the labelled rows: a
negligible optimism next to the label noise).

No Dagster here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from scipy.special import logsumexp, softmax

from rlhf_assets.evaluation.logged import validate_log
from rlhf_assets.evaluation.ope import (
    ESTIMATORS,
    bootstrap_ci,
    effective_sample_size,
    linear_outcome_map,
    log_importance_weights,
    mixture_logprob,
    pareto_k,
    policy_value,
    uplift,
)
from rlhf_assets.jsonsafe import finite_or_none
from rlhf_assets.policy.inference import PolicySource, policy_from, rollout, teacher_forced_logprobs
from rlhf_assets.policy.reward_fn import RewardLike, as_reward_fn

__all__ = [
    "OUTCOMES",
    "BehaviorMixture",
    "behavior_mixture",
    "check_same_tokenizer",
    "direct_method_baseline",
    "evaluate_target",
    "markdown_report",
    "target_logprobs",
    "weights_histogram_png",
]

_DM_SEED_OFFSET = 7_654_321  # the DM baseline's samples never reuse the log's random stream
Outcome = Literal["reward", "human"]
OUTCOMES: tuple[str, ...] = ("reward", "human")  # what evaluate_target estimates the value of


# ------------------------------------------------------------------------------------------------ tokenizers


def check_same_tokenizer(target_tok: Any, behavior_tok: Any) -> None:
    """Raise ValueError unless the two tokenizers map the same strings to the same ids (vocabulary, EOS, pad)."""
    if target_tok.get_vocab() != behavior_tok.get_vocab():
        va, vb = target_tok.get_vocab(), behavior_tok.get_vocab()
        raise ValueError(f"the target and behaviour policies do not share a tokenizer (vocabularies of {len(va)} and "
                         f"{len(vb)} entries differ): importance weights compare probabilities of the same token "
                         f"ids, so a target with another tokenizer cannot be evaluated on this log")
    for attr in ("eos_token_id", "pad_token_id"):
        a, b = getattr(target_tok, attr), getattr(behavior_tok, attr)
        if a != b:
            raise ValueError(f"the target and behaviour tokenizers differ in {attr} ({a} vs {b})")


def _check_log_tokens(tok: Any, model: Any, df: pl.DataFrame) -> None:
    """The target's tokenizer must read the logged ids as the logged text (the log carries no tokenizer)."""
    vocab = min(len(tok), int(model.lm.get_input_embeddings().weight.shape[0]))
    top = max(int(df["prompt_token_ids"].list.max().max()), int(df["response_token_ids"].list.max().max()))
    if top >= vocab:
        raise ValueError(f"the log holds token id {top}, outside the target policy's vocabulary of {vocab}: the "
                         f"target and behaviour policies do not share a tokenizer")
    for i, (ids, text) in enumerate(zip(df["response_token_ids"].to_list(), df["response"].to_list())):
        decoded = tok.decode(ids, skip_special_tokens=True)
        if decoded != text:
            raise ValueError(f"the target policy's tokenizer decodes the logged response ids of row {i} to "
                             f"{decoded[:60]!r}, not the logged {text[:60]!r}: the target and behaviour policies "
                             f"must share a tokenizer (or the log's text and ids disagree)")


# --------------------------------------------------------------------------------------------- target scores


def target_logprobs(target_dir_or_model: PolicySource, log_df: pl.DataFrame, *, temperature: float = 1.0,
                    batch_size: int = 32, device: str | torch.device = "cpu", behavior_tokenizer: Any = None,
                    check_tokenizer: bool = True) -> np.ndarray:
    """Sequence log-probability (n,) of each logged response under the target policy at ``temperature``.

    Teacher-forced on the logged ``response_token_ids`` after the logged ``prompt_token_ids`` (so the prompt
    truncation is the behaviour's), one fp32 forward pass per batch, log-softmax(logits / ``temperature``) summed
    over the response tokens (EOS included when the response ended). ``target_dir_or_model`` is a policy artifact
    directory or a loaded ``(model, tokenizer)``. The tokenizer check is described in the module docstring.
    """
    df = validate_log(log_df)
    model, tok, _ = policy_from(target_dir_or_model, device)
    if behavior_tokenizer is not None:
        check_same_tokenizer(tok, behavior_tokenizer)
    if check_tokenizer:
        _check_log_tokens(tok, model, df)
    per_token = teacher_forced_logprobs(model, df["prompt_token_ids"].to_list(), df["response_token_ids"].to_list(),
                                        tok.pad_token_id, temperature=float(temperature), batch_size=batch_size)
    return np.array([float(lp.sum()) for lp in per_token], dtype=np.float64)


def direct_method_baseline(target_model: PolicySource, reward: RewardLike, prompts: Sequence[str], n_samples: int, *,
                           prompt_token_ids: Sequence[Sequence[int]] | None = None,
                           max_prompt_tokens: int | None = None, max_new_tokens: int, temperature: float = 1.0,
                           seed: int = 0, batch_size: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """v̂ per row of ``prompts``: the mean calibrated reward (``ProxyReward.raw``, no EOS penalty) of ``n_samples``
    on-policy target responses to that prompt, sampled at ``temperature`` with the ``max_new_tokens`` cap.

    Each distinct prompt is sampled once (``n_samples`` times), however often it repeats. Pass the logged
    ``prompt_token_ids`` to condition on exactly what the behaviour policy saw; otherwise the prompts are encoded
    keeping their last ``max_prompt_tokens`` tokens. Seeded.
    """
    from rlhf_assets.policy.data import encode_prompt

    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be ≥ 1; got {n_samples}")
    model, tok, _ = policy_from(target_model, device)
    prompts = list(prompts)
    if prompt_token_ids is None:
        if max_prompt_tokens is None:
            raise ValueError("pass prompt_token_ids (the logged ones) or max_prompt_tokens")
        prompt_token_ids = [encode_prompt(tok, p, int(max_prompt_tokens)) for p in prompts]
    ids = [list(map(int, p)) for p in prompt_token_ids]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} prompt_token_ids")
    keys = [(p, tuple(i)) for p, i in zip(prompts, ids)]
    unique = list(dict.fromkeys(keys))
    reps = int(n_samples)
    gen = torch.Generator().manual_seed(int(seed) + _DM_SEED_OFFSET)
    _, texts, _ = rollout(model, tok, [list(k[1]) for k in unique for _ in range(reps)],
                          max_new_tokens=int(max_new_tokens), temperature=float(temperature), generator=gen,
                          batch_size=batch_size)
    scores = as_reward_fn(reward)([k[0] for k in unique for _ in range(reps)], texts)
    means = np.asarray(scores, dtype=np.float64).reshape(len(unique), reps).mean(axis=1)
    by_key = dict(zip(unique, means))
    return np.array([by_key[k] for k in keys], dtype=np.float64)


# ------------------------------------------------------------------------------------------- several behaviours

#: |teacher-forced log π_own − logged behavior_logprob| allowed per response token: fp32 rescoring agrees to ~1e-6,
#: so anything near this is another model, another temperature, or a low-precision serving stack.
_OWN_LOGP_TOL = 1e-3


@dataclass
class BehaviorMixture:
    """The behaviour density of a log mixing several policies (:func:`behavior_mixture`)."""

    policy_ids: list[str]                # sorted; the columns of the mixture
    counts: dict[str, int]
    shares: dict[str, float]             # n_j / n
    temperatures: dict[str, float]       # each policy's serving temperature, read from its own rows
    logp: dict[str, np.ndarray]          # log π_j(y_i | x_i) of EVERY row, teacher-forced at π_j's temperature
    log_q: np.ndarray                    # log Σ_j s_j π_j(y_i | x_i)
    own_check: dict[str, dict[str, Any]]  # per policy: teacher forcing vs the logged behavior_logprob on its rows
    unused: list[str]                    # ids in ``behaviors`` with no row in the log (share 0: no effect)

    @property
    def reason(self) -> str | None:
        """Why the mixture density cannot be trusted (a policy whose rescoring disagrees with its log), or None."""
        bad = [f"policy {pid!r}: teacher forcing disagrees with the logged behavior_logprob on {c['n_mismatched']} "
               f"of {c['n']} of its rows (max |Δ| {c['max_abs_diff']:.3g} nats, tolerance {_OWN_LOGP_TOL:g} per "
               f"token) — the policy given for that id is not the one (or not at the temperature) that served "
               f"them, so the mixture density is wrong" for pid, c in self.own_check.items() if c["n_mismatched"]]
        return "; ".join(bad) or None

    def to_dict(self) -> dict[str, Any]:
        return {"policy_ids": self.policy_ids, "counts": self.counts, "shares": self.shares,
                "temperatures": self.temperatures,
                "max_weight_bound": {pid: 1.0 / s for pid, s in self.shares.items()},
                "own_logprob_check": {"tolerance_per_token": _OWN_LOGP_TOL, "ok": self.reason is None,
                                      "policies": self.own_check},
                "unused_behaviors": self.unused}


def behavior_mixture(behaviors: Mapping[str, PolicySource], log_df: pl.DataFrame, *, tokenizer: Any = None,
                     batch_size: int = 32, device: str | torch.device = "cpu") -> BehaviorMixture:
    """Multiple importance sampling's behaviour density for a log whose rows come from several policies.

    ``behaviors`` maps every ``policy_id`` in the log to its policy (artifact directory or loaded
    ``(model, tokenizer)``). Each policy is teacher-forced on EVERY row at its own serving temperature (read from
    its rows: one per policy), and log q = log Σ_j s_j π_j with s_j its share of the rows
    (:func:`.ope.mixture_logprob`). Each policy's rescoring of its own rows is compared with the logged
    ``behavior_logprob`` (``own_check``; a disagreement makes :attr:`BehaviorMixture.reason`). The policies must
    share ``tokenizer`` (the target's, when given) and their ``max_new_tokens`` caps: the cap is taken as a property
    of the request, so every policy's density of a row is that of the same capped process.
    """
    df = validate_log(log_df)
    counts = dict(sorted(df.group_by("policy_id").len().iter_rows()))
    ids = list(counts)
    missing = [pid for pid in ids if pid not in behaviors]
    if missing:
        raise ValueError(f"the log has rows of policy id(s) {missing} that `behaviors` does not map to a policy "
                         f"(given: {sorted(behaviors)}); every behaviour policy must be rescored on every row")
    temps, caps = {}, {}
    for pid in ids:
        mine = df.filter(pl.col("policy_id") == pid)
        t = sorted(mine["temperature"].unique().to_list())
        if len(t) != 1:
            raise ValueError(f"policy {pid!r} served at several temperatures {t}; give each temperature its own "
                             f"policy_id (each is a different sampling distribution)")
        temps[pid] = float(t[0])
        caps[pid] = sorted(mine["max_new_tokens"].unique().to_list())
    if len({tuple(c) for c in caps.values()}) > 1:
        raise ValueError(f"the behaviour policies served under different max_new_tokens caps {caps}; multiple "
                         f"importance sampling needs one capped process per request")
    p_ids, r_ids = df["prompt_token_ids"].to_list(), df["response_token_ids"].to_list()
    logged = df["behavior_logprob"].to_numpy()
    lengths = df["response_token_ids"].list.len().to_numpy()
    policy_col = df["policy_id"].to_numpy()
    logp, own = {}, {}
    for pid in ids:
        model, tok, _ = policy_from(behaviors[pid], device)
        if tokenizer is not None:
            check_same_tokenizer(tokenizer, tok)
        per_token = teacher_forced_logprobs(model, p_ids, r_ids, tok.pad_token_id, temperature=temps[pid],
                                            batch_size=batch_size)
        logp[pid] = np.array([float(lp.sum()) for lp in per_token], dtype=np.float64)
        rows = policy_col == pid
        diff = np.abs(logp[pid][rows] - logged[rows])
        own[pid] = {"n": int(rows.sum()), "max_abs_diff": float(diff.max()),
                    "n_mismatched": int((diff > _OWN_LOGP_TOL * lengths[rows]).sum())}
    shares = {pid: counts[pid] / df.height for pid in ids}
    log_q = mixture_logprob(np.stack([logp[pid] for pid in ids], axis=1), [shares[pid] for pid in ids])
    return BehaviorMixture(policy_ids=ids, counts={k: int(v) for k, v in counts.items()}, shares=shares,
                           temperatures=temps, logp=logp, log_q=log_q, own_check=own,
                           unused=sorted(set(behaviors) - set(ids)))


def _baseline_id(ids: list[str], behaviors: Mapping[str, PolicySource] | None,
                 baseline_policy_id: str | None) -> str:
    if behaviors is None and len(ids) > 1:
        raise ValueError(f"the log mixes {len(ids)} behaviour policies {ids}: pass behaviors={{policy_id: artifact "
                         f"dir or (model, tokenizer)}} for each (weights against their mixture) and "
                         f"baseline_policy_id (the production policy the uplift is against)")
    if baseline_policy_id is None:
        if len(ids) > 1:
            raise ValueError(f"the log mixes policies {ids}: name the one the uplift is against (production) with "
                             f"baseline_policy_id")
        return ids[0]
    if baseline_policy_id not in ids:
        raise ValueError(f"baseline_policy_id {baseline_policy_id!r} has no rows in the log (policies: {ids})")
    return baseline_policy_id


def _direct_method(model: Any, tok: Any, reward: RewardLike, df: pl.DataFrame, dm_samples: int,
                   temperature: float, seed: int, batch_size: int) -> np.ndarray:
    """v̂ (RM scale) per row of ``df``, the target sampled under each row's own cap."""
    v = np.empty(df.height, dtype=np.float64)
    caps = df["max_new_tokens"].to_numpy()
    for cap in np.unique(caps):  # the target is evaluated under the behaviour's cap
        rows = np.flatnonzero(caps == cap)
        sub = df[rows]
        v[rows] = direct_method_baseline((model, tok), reward, sub["prompt"].to_list(), int(dm_samples),
                                         prompt_token_ids=sub["prompt_token_ids"].to_list(),
                                         max_new_tokens=int(cap), temperature=temperature, seed=seed,
                                         batch_size=batch_size)
    return v


# ------------------------------------------------------------------------------------------------ the report


def _normalized_log10(log_w: np.ndarray) -> np.ndarray:
    """log10(w / mean w): 0 is an average weight."""
    return (log_w - (logsumexp(log_w) - math.log(log_w.size))) / math.log(10.0)


def evaluate_target(log_df: pl.DataFrame, target_dir: PolicySource, reward: RewardLike = None, *,
                    estimator: str = "sndr", target_temperature: float = 1.0, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0, min_ess_share: float = 0.1, max_pareto_k: float = 0.7,
                    clip: float = 100.0, dm_samples: int = 4, batch_size: int = 32,
                    device: str | torch.device = "cpu", target_id: str | None = None,
                    behavior_tokenizer: Any = None, behaviors: Mapping[str, PolicySource] | None = None,
                    baseline_policy_id: str | None = None, outcome: Outcome = "reward") -> dict[str, Any]:
    """The off-policy report of ``target_dir`` (artifact directory or loaded ``(model, tokenizer)``) on a log.

    ``estimator`` is one of :data:`.ope.ESTIMATORS`; ``dr``/``sndr`` need ``reward`` and ``dm_samples`` ≥ 1 (the
    baseline v̂ from :func:`direct_method_baseline`, q̂ = the logged reward; see the module docstring).
    ``target_temperature`` is the temperature the target will be served at. Thresholds and the bootstrap are those
    of :func:`.ope.estimate_policy_value`, and are reported next to the measured values.

    Several behaviour policies: a log with more than one ``policy_id`` needs ``behaviors`` (policy id → its policy)
    and ``baseline_policy_id`` (production: the policy the uplift is against); the weights are then π_t / q against
    the mixture (:func:`behavior_mixture`), and the behaviour value is the baseline's SNIS estimate over ALL rows
    with its weights π_b / q ≤ 1/s_b (module docstring: why not its own rows' mean, which is reported beside it).
    Without ``behaviors`` (a one-policy log) nothing changes: the logged ``behavior_logprob`` is the density.

    ``outcome="human"``: the outcome is ``human_label``, on the rows that have one (at least 2), and the DR model
    is the reward model mapped onto the label's scale by :func:`.ope.linear_outcome_map` (module docstring).

    Returns a JSON-safe dict (non-finite floats → None): ``target`` (``OPEEstimate.to_dict()``), ``behavior``
    (the baseline policy's value with a bootstrap CI, its ``policy_id``, ``estimator`` and ``own_rows`` mean),
    ``uplift`` (``UpliftEstimate.to_dict()`` without its nested ``target``, which is the key above), ``ess``,
    ``ess_share``, ``pareto_k``, ``reliable``, ``reason``, ``thresholds``, ``weights`` (the estimator's summary plus
    quantiles of w / mean w), ``snis_value`` (the importance-sampling cross-check), ``direct_method`` (mean v̂, or
    None), ``mis`` (shares, counts, temperatures, weight bounds, the own-log-prob check; None for one behaviour),
    ``outcome`` and ``human`` (labelled rows and the outcome map; None for the reward), policy ids and
    temperatures, ``n`` (rows estimated on) and ``n_log``, and ``log_weights`` (one per row estimated on, for
    :func:`weights_histogram_png`; drop it before publishing a large log).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {list(ESTIMATORS)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {list(OUTCOMES)}")
    df = validate_log(log_df)
    ids = sorted(df["policy_id"].unique().to_list())
    baseline = _baseline_id(ids, behaviors, baseline_policy_id)
    if outcome == "human":
        rows = np.flatnonzero(df["human_label"].is_not_null().to_numpy())
        if rows.size < 2:
            raise ValueError(f"outcome='human' needs a human_label on at least 2 rows; the log has {rows.size} "
                             f"of {df.height}")
    else:
        rows = np.arange(df.height)
    model, tok, tid = policy_from(target_dir, device)
    lt = target_logprobs((model, tok), df, temperature=target_temperature, batch_size=batch_size,
                         behavior_tokenizer=behavior_tokenizer)
    mix = None
    if behaviors is None:
        lb, base_lw = df["behavior_logprob"].to_numpy(), None
    else:
        mix = behavior_mixture(behaviors, df, tokenizer=tok, batch_size=batch_size, device=device)
        lb = mix.log_q
        base_lw = mix.logp[baseline] - lb
    log_w_all = log_importance_weights(lt, lb)  # validated on the whole log, then cut to the rows estimated on

    r_all = df["reward"].to_numpy()
    human = None
    if outcome == "human":
        y = df["human_label"].to_numpy()[rows]
        outcome_map = linear_outcome_map(r_all[rows], y)
        human = {"n_labelled": int(rows.size), "labelled_share": rows.size / df.height,
                 "outcome_map": {"kind": "linear fit of human_label on the logged reward over the labelled rows",
                                 **outcome_map}}
    else:
        y = r_all
    sub = df[rows] if outcome == "human" else df
    lt, lb, r = lt[rows], lb[rows], r_all[rows]
    base_lw = None if base_lw is None else base_lw[rows]
    log_w = log_w_all[rows]

    q = v = None
    direct = None
    if estimator in ("dr", "sndr"):
        if reward is None or int(dm_samples) < 1:
            raise ValueError(f"estimator {estimator!r} needs the reward model and dm_samples ≥ 1 for its direct-method "
                             f"baseline; or use estimator='snis'")
        v_rm = _direct_method(model, tok, reward, sub, int(dm_samples), target_temperature, seed, batch_size)
        if human is None:
            q, v = r, v_rm
        else:  # the RM on the label's scale: q̂ = a + b·r, v̂ = a + b·E_target[RM] (the map is linear)
            a, b = human["outcome_map"]["intercept"], human["outcome_map"]["slope"]
            q, v = a + b * r, a + b * v_rm
        direct = {"value": float(v.mean()), "samples_per_prompt": int(dm_samples),
                  "n_prompts": int(sub.select(pl.struct("prompt", "prompt_token_ids").n_unique()).item())}
        if human is not None:
            direct["reward_scale_value"] = float(v_rm.mean())

    up = uplift(lt, lb, y, q, v, estimator=estimator, clip=clip, n_boot=n_boot, level=level, seed=seed,
                min_ess_share=min_ess_share, max_pareto_k=max_pareto_k, baseline_log_w=base_lw)
    tgt = up.target
    if mix is not None and mix.reason:
        tgt.reliable, tgt.reason = False, "; ".join(x for x in (tgt.reason, mix.reason) if x)
    if base_lw is None:
        b_lo, b_hi = bootstrap_ci(lambda x: x.mean(axis=-1), y, n_boot=n_boot, level=level, seed=seed)
    else:
        b_lo, b_hi = bootstrap_ci(lambda bw, x: np.sum(softmax(bw, axis=-1) * x, axis=-1), base_lw, y,
                                  n_boot=n_boot, level=level, seed=seed)
    own_rows = sub["policy_id"].to_numpy() == baseline
    norm = 10.0 ** _normalized_log10(log_w)
    weights = dict(tgt.to_dict()["weights"])
    weights.update({f"norm_q{int(p)}": float(np.percentile(norm, p)) for p in (50, 90, 99)})
    weights["norm_max"] = float(norm.max())
    uplift_dict = up.to_dict()
    uplift_dict.pop("target")
    return {
        "estimator": estimator,
        "outcome": outcome,
        "n": int(rows.size),
        "n_log": int(df.height),
        "target_policy_id": target_id or tid,
        "behavior_policy_ids": ids,
        "baseline_policy_id": baseline,
        "target_temperature": float(target_temperature),
        "behavior_temperatures": sorted(float(t) for t in df["temperature"].unique().to_list()),
        "target": tgt.to_dict(),
        "behavior": {"value": up.behavior_value, "ci_low": finite_or_none(b_lo), "ci_high": finite_or_none(b_hi),
                     "level": float(level), "n": int(rows.size), "policy_id": baseline,
                     "estimator": "mean of the logged outcome" if base_lw is None
                     else "snis over the mixture (multiple importance sampling)",
                     "own_rows": {"value": finite_or_none(float(y[own_rows].mean())) if own_rows.any() else None,
                                  "n": int(own_rows.sum())}},
        "uplift": uplift_dict,
        "ess": float(tgt.ess),
        "ess_share": float(tgt.ess_share),
        "pareto_k": finite_or_none(tgt.pareto_k),
        "reliable": bool(tgt.reliable),
        "reason": tgt.reason,
        "thresholds": {"min_ess_share": float(min_ess_share), "max_pareto_k": float(max_pareto_k),
                       "clip": float(clip)},
        "weights": weights,
        "snis_value": policy_value(log_w, y, estimator="snis"),
        "direct_method": direct,
        "mis": None if mix is None else mix.to_dict(),
        "human": human,
        "log_weights": log_w.tolist(),
    }


def weights_histogram_png(log_w: Any, *, ess: float | None = None, pareto_k_hat: float | None = None,
                          title: str = "importance weights") -> bytes:
    """PNG histogram of log10(w / mean w) — 0 is an average weight, a long right tail is what breaks an estimate —
    with ESS (and its share of n) and Pareto k̂ in the title (computed when not given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lw = np.asarray(log_w, dtype=np.float64)
    if lw.ndim != 1 or lw.size == 0 or not np.all(np.isfinite(lw)):
        raise ValueError("log_w must be a non-empty one-dimensional array of finite log-weights")
    ess = effective_sample_size(lw) if ess is None else float(ess)
    k = pareto_k(lw) if pareto_k_hat is None else float(pareto_k_hat)
    k_text = "k̂ n/a (constant weights)" if k == -math.inf else ("k̂ n/a (tail too short)" if k == math.inf
                                                                 else f"k̂ = {k:.2f}")
    fig = Figure(figsize=(5.2, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(f"{title}: ESS {ess:.0f} / {lw.size} ({100 * ess / lw.size:.0f}%), {k_text}", fontsize=10)
    ax.grid(alpha=0.3)
    x = _normalized_log10(lw)
    ax.hist(x, bins=min(50, max(10, lw.size // 10)), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="gray", ls=":", label="mean weight")
    ax.set_xlabel("log10(w / mean w)")
    ax.set_ylabel("logged samples")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(d: dict) -> str:
    lo, hi = d.get("ci_low"), d.get("ci_high")
    return "—" if lo is None or hi is None else f"[{_fmt(lo)}, {_fmt(hi)}]"


def _estimates_table(report: dict[str, Any], level: int) -> list[str]:
    t, b, u = report["target"], report["behavior"], report["uplift"]
    lines = [
        f"| quantity | estimate | {level}% CI |",
        "|---|---:|---:|",
        f"| target value ({report['estimator']}) | {_fmt(t['value'])} | {_ci(t)} |",
        f"| behaviour value (mean logged reward) | {_fmt(b['value'])} | {_ci(b)} |",
        f"| **uplift** (target − behaviour) | **{_fmt(u['value'])}** | {_ci(u)} |",
    ]
    if report["estimator"] != "snis":
        lines.append(f"| importance-sampling cross-check (snis) | {_fmt(report['snis_value'])} | — |")
    if report.get("direct_method"):
        dm = report["direct_method"]
        lines.append(f"| direct method ({dm['samples_per_prompt']} target samples × {dm['n_prompts']} prompts) "
                     f"| {_fmt(dm['value'])} | — |")
    return lines


def _side_by_side_table(report: dict[str, Any], level: int) -> list[str]:
    """Proxy and judge columns (release_ope.proxy_and_judge's report): same log, same weights, two rewards."""
    proxy, judge = report["proxy"], report["judge"]
    sides = [proxy] + ([judge] if judge.get("measured") else [])

    def cell(side: dict, key: str, bold: bool = False) -> str:
        d = side.get(key) or {}
        text = f"{_fmt(d.get('value'))} {_ci(d)}"
        return f"**{text}**" if bold else text

    header = "| quantity | proxy (the reward model PPO optimised) |"
    header += " judge (held-out, gates) |" if judge.get("measured") else ""
    intro = ("The same log and importance weights, scored by two reward models" if judge.get("measured")
             else "Scored by the proxy only (no judge)")
    lines = [f"{intro} ({level}% intervals):", "", header, "|---" + "|---:" * len(sides) + "|"]
    lines.append(f"| target value ({report['estimator']}) | " + " | ".join(cell(s, "target") for s in sides) + " |")
    lines.append("| behaviour value (mean logged score) | " + " | ".join(cell(s, "behavior") for s in sides) + " |")
    lines.append("| **uplift** (target − behaviour) | " + " | ".join(cell(s, "uplift", True) for s in sides) + " |")
    if report["estimator"] != "snis":
        lines.append("| importance-sampling cross-check (snis) | "
                     + " | ".join(_fmt(s.get("snis_value")) for s in sides) + " |")
    if proxy.get("direct_method"):
        dm = proxy["direct_method"]
        lines.append(f"| direct method ({dm['samples_per_prompt']} target samples × {dm['n_prompts']} prompts) | "
                     + " | ".join(_fmt((s.get("direct_method") or {}).get("value")) for s in sides) + " |")
    lines += ["", f"- proxy uplift: {_fmt(proxy['uplift']['value'])} {_ci(proxy['uplift'])} in {proxy['units']} "
                  f"— PPO was trained to raise it; reported, never gates"]
    if judge.get("measured"):
        lines.append(f"- **judge uplift: {_fmt(judge['uplift']['value'])} {_ci(judge['uplift'])}** in "
                     f"{judge['units']} — judge `{str(judge.get('reward_model_id'))[:16]}`, trained on pairs the "
                     f"policy never saw")
    else:
        lines.append(f"- **judge uplift: not measured** — {judge.get('reason')}")
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """A short markdown summary of :func:`evaluate_target`'s report: the estimates with their intervals, the
    weight diagnostics and the reliability verdict with its reason. A report with ``proxy`` and ``judge``
    (release_ope.proxy_and_judge) shows the two uplifts side by side, labelled."""
    th = report["thresholds"]
    level = int(round(100 * report["target"].get("level", 0.95)))
    lines = [
        f"### Off-policy evaluation of `{str(report['target_policy_id'])[:16]}` "
        f"(T={report['target_temperature']:g}) on {report['n']} logged responses",
        "",
        *(_side_by_side_table(report, level) if "proxy" in report and "judge" in report
          else _estimates_table(report, level)),
    ]
    k = report["pareto_k"]
    k_text = "n/a" if k is None else f"{k:.2f}"
    w = report["weights"]
    lines += [
        "",
        f"- ESS: {report['ess']:.1f} of {report['n']} ({100 * report['ess_share']:.1f}%; needs ≥ "
        f"{100 * th['min_ess_share']:g}%)",
        f"- Pareto k̂: {k_text} (needs ≤ {th['max_pareto_k']:g})",
        f"- weights w / mean w: median {_fmt(w['norm_q50'], 2)}, 99th percentile {_fmt(w['norm_q99'], 2)}, "
        f"max {_fmt(w['norm_max'], 2)} (largest weight carries {100 * (w['max_share'] or 0):.1f}% of the total)",
        "",
    ]
    if report["reliable"]:
        lines.append("**Reliable**: the importance weights support an estimate at this sample size.")
    else:
        lines.append(f"**UNRELIABLE — do not act on this estimate.** {report['reason']}. The logged traffic cannot "
                     f"measure this policy; measure it live (canary).")
    return "\n".join(lines) + "\n"
