"""Sequence-level off-policy evaluation of a target policy on a log of the behaviour policy's responses.

The pieces :mod:`.ope` needs, computed from a validated log (:mod:`.logged`) and a target policy:

- :func:`target_logprobs` — log π_t(response | prompt) of every logged response, teacher-forced on the SAME token
  ids and the same (already truncated, logged) prompt ids, at the target's serving temperature. Importance weights
  compare two probabilities of one token sequence, so the policies must share a tokenizer: this is checked (the
  target's tokenizer must decode the logged ids to the logged text, and, when the behaviour tokenizer is given,
  have the same vocabulary) and a mismatch is an error, never a silently wrong weight.
- :func:`direct_method_baseline` — the doubly robust baseline v̂(x): the mean calibrated reward of a few on-policy
  target samples per prompt.
- :func:`evaluate_target` — the whole report the ``ope_report`` asset publishes: the target's estimated value,
  the behaviour policy's value (the mean logged reward), the uplift with its paired-bootstrap interval, ESS, k̂,
  a weight summary, the reliability verdict; :func:`weights_histogram_png` and :func:`markdown_report` render it.

A note on the doubly robust estimators here. The logged ``reward`` IS the calibrated reward-model score, and the DR
outcome model q̂(x, y) is that same reward model, so q̂ = r on every logged row: the correction term Σ w·(r − q̂)
vanishes and DR/SNDR reduce to the direct method, mean(v̂) — an on-policy Monte-Carlo estimate whose only error is
the finite number of target samples (``dm_samples``), and whose cost is generating them. It is the most accurate
estimate of the target's RM value, but it does not *use* the importance weights; the weights still decide
reliability (a target whose weights have a heavy tail is far from the logged traffic, and the gate should not act
on an RM-only number there). The report therefore also carries the pure importance-sampling estimate
(``snis_value``) as an independent cross-check. With human labels as the outcome, q̂ ≠ r and DR does its usual job.

No Dagster here.
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional, Sequence

import numpy as np
import polars as pl
import torch
from scipy.special import logsumexp

from rlhf_assets.evaluation.logged import (
    PolicySource,
    RewardLike,
    as_reward_fn,
    policy_from,
    rollout,
    teacher_forced_logprobs,
    validate_log,
)
from rlhf_assets.evaluation.ope import (
    ESTIMATORS,
    bootstrap_ci,
    effective_sample_size,
    log_importance_weights,
    pareto_k,
    policy_value,
    uplift,
)

__all__ = [
    "check_same_tokenizer",
    "direct_method_baseline",
    "evaluate_target",
    "markdown_report",
    "target_logprobs",
    "weights_histogram_png",
]

_DM_SEED_OFFSET = 7_654_321  # the DM baseline's samples never reuse the log's random stream


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
                           prompt_token_ids: Optional[Sequence[Sequence[int]]] = None,
                           max_prompt_tokens: Optional[int] = None, max_new_tokens: int, temperature: float = 1.0,
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


# ------------------------------------------------------------------------------------------------ the report


def _normalized_log10(log_w: np.ndarray) -> np.ndarray:
    """log10(w / mean w): 0 is an average weight."""
    return (log_w - (logsumexp(log_w) - math.log(log_w.size))) / math.log(10.0)


def _json(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def evaluate_target(log_df: pl.DataFrame, target_dir: PolicySource, reward: RewardLike = None, *,
                    estimator: str = "sndr", target_temperature: float = 1.0, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0, min_ess_share: float = 0.1, max_pareto_k: float = 0.7,
                    clip: float = 100.0, dm_samples: int = 4, batch_size: int = 32,
                    device: str | torch.device = "cpu", target_id: Optional[str] = None,
                    behavior_tokenizer: Any = None) -> dict[str, Any]:
    """The off-policy report of ``target_dir`` (artifact directory or loaded ``(model, tokenizer)``) on a log.

    ``estimator`` is one of :data:`.ope.ESTIMATORS`; ``dr``/``sndr`` need ``reward`` and ``dm_samples`` ≥ 1 (the
    baseline v̂ from :func:`direct_method_baseline`, q̂ = the logged reward; see the module docstring).
    ``target_temperature`` is the temperature the target will be served at. Thresholds and the bootstrap are those
    of :func:`.ope.estimate_policy_value`, and are reported next to the measured values.

    Returns a JSON-safe dict (non-finite floats → None): ``target`` (``OPEEstimate.to_dict()``), ``behavior``
    (mean logged reward with a bootstrap CI), ``uplift`` (``UpliftEstimate.to_dict()`` without its nested
    ``target``, which is the key above), ``ess``, ``ess_share``, ``pareto_k``, ``reliable``, ``reason``,
    ``thresholds``, ``weights`` (the estimator's summary plus quantiles of w / mean w), ``snis_value`` (the
    importance-sampling cross-check), ``direct_method`` (mean v̂, or None), policy ids and temperatures, and
    ``log_weights`` (one per row, for :func:`weights_histogram_png`; drop it before publishing a large log).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {list(ESTIMATORS)}")
    df = validate_log(log_df)
    model, tok, tid = policy_from(target_dir, device)
    lt = target_logprobs((model, tok), df, temperature=target_temperature, batch_size=batch_size,
                         behavior_tokenizer=behavior_tokenizer)
    lb = df["behavior_logprob"].to_numpy()
    r = df["reward"].to_numpy()
    log_w = log_importance_weights(lt, lb)

    q = v = None
    direct = None
    if estimator in ("dr", "sndr"):
        if reward is None or int(dm_samples) < 1:
            raise ValueError(f"estimator {estimator!r} needs the reward model and dm_samples ≥ 1 for its direct-method "
                             f"baseline; or use estimator='snis'")
        v = np.empty(df.height, dtype=np.float64)
        caps = df["max_new_tokens"].to_numpy()
        for cap in np.unique(caps):  # the target is evaluated under the behaviour's cap
            rows = np.flatnonzero(caps == cap)
            sub = df[rows]
            v[rows] = direct_method_baseline((model, tok), reward, sub["prompt"].to_list(), int(dm_samples),
                                             prompt_token_ids=sub["prompt_token_ids"].to_list(),
                                             max_new_tokens=int(cap), temperature=target_temperature, seed=seed,
                                             batch_size=batch_size)
        q = r
        direct = {"value": float(v.mean()), "samples_per_prompt": int(dm_samples),
                  "n_prompts": int(df.select(pl.struct("prompt", "prompt_token_ids").n_unique()).item())}

    up = uplift(lt, lb, r, q, v, estimator=estimator, clip=clip, n_boot=n_boot, level=level, seed=seed,
                min_ess_share=min_ess_share, max_pareto_k=max_pareto_k)
    tgt = up.target
    b_lo, b_hi = bootstrap_ci(lambda x: x.mean(axis=-1), r, n_boot=n_boot, level=level, seed=seed)
    norm = 10.0 ** _normalized_log10(log_w)
    weights = dict(tgt.to_dict()["weights"])
    weights.update({f"norm_q{int(p)}": float(np.percentile(norm, p)) for p in (50, 90, 99)})
    weights["norm_max"] = float(norm.max())
    uplift_dict = up.to_dict()
    uplift_dict.pop("target")
    return {
        "estimator": estimator,
        "n": int(df.height),
        "target_policy_id": target_id or tid,
        "behavior_policy_ids": sorted(df["policy_id"].unique().to_list()),
        "target_temperature": float(target_temperature),
        "behavior_temperatures": sorted(float(t) for t in df["temperature"].unique().to_list()),
        "target": tgt.to_dict(),
        "behavior": {"value": float(r.mean()), "ci_low": _json(b_lo), "ci_high": _json(b_hi), "level": float(level),
                     "n": int(df.height)},
        "uplift": uplift_dict,
        "ess": float(tgt.ess),
        "ess_share": float(tgt.ess_share),
        "pareto_k": _json(tgt.pareto_k),
        "reliable": bool(tgt.reliable),
        "reason": tgt.reason,
        "thresholds": {"min_ess_share": float(min_ess_share), "max_pareto_k": float(max_pareto_k),
                       "clip": float(clip)},
        "weights": weights,
        "snis_value": policy_value(log_w, r, estimator="snis"),
        "direct_method": direct,
        "log_weights": log_w.tolist(),
    }


def weights_histogram_png(log_w: Any, *, ess: Optional[float] = None, pareto_k_hat: Optional[float] = None,
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


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(d: dict) -> str:
    lo, hi = d.get("ci_low"), d.get("ci_high")
    return "—" if lo is None or hi is None else f"[{_fmt(lo)}, {_fmt(hi)}]"


def markdown_report(report: dict[str, Any]) -> str:
    """A short markdown summary of :func:`evaluate_target`'s report: the estimates with their intervals, the
    weight diagnostics and the reliability verdict with its reason."""
    t, b, u = report["target"], report["behavior"], report["uplift"]
    th = report["thresholds"]
    level = int(round(100 * t.get("level", 0.95)))
    lines = [
        f"### Off-policy evaluation of `{str(report['target_policy_id'])[:16]}` "
        f"(T={report['target_temperature']:g}) on {report['n']} logged responses",
        "",
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
