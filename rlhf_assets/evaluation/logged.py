"""Logged production data for off-policy evaluation: the schema, its validation, and a simulator.

One row per response the behaviour policy (the registry's ``production`` alias; the SFT policy before any
promotion) served — and, while a canary runs, the canary's responses too: ``policy_id`` says which policy served a
row, and a log of several is weighted against their mixture (:func:`.sequence_ope.behavior_mixture`):

=========================  ==============  =========================================================================
column                     type            meaning
=========================  ==============  =========================================================================
prompt                     str             the prompt text
prompt_token_ids           list[int]       the prompt ids the policy saw (after truncation: the END is kept)
response                   str             the response text (the ids below decoded, special tokens skipped)
response_token_ids         list[int]       the response ids as sampled, EOS included when it ended
behavior_token_logprobs    list[float]     log π_b of each response token, of the distribution SAMPLED FROM
behavior_logprob           float           their sum: the sequence log-probability log π_b(response | prompt)
reward                     float           the calibrated reward-model score (``ProxyReward.raw``; no EOS penalty)
human_label                float | null    a human audit's score of the response, where one exists (any scale)
policy_id                  str             the behaviour policy's artifact id
temperature                float           the sampling temperature T the response was drawn at
max_new_tokens             int             the response length cap (a capped response has no EOS)
=========================  ==============  =========================================================================

Temperature. A response sampled at temperature T is drawn from softmax(logits / T), not from softmax(logits), so
``behavior_token_logprobs`` are log-softmax(logits / T) at the sampled ids. Recording the T = 1 log-probs of a
T ≠ 1 sample would make every importance weight wrong by a factor that grows with the response length (the
estimate would be silently biased, not noisy). Likewise the target policy is evaluated *as it will be served*:
its log-probs use the target's own serving temperature (see :mod:`.sequence_ope`).

The cap. ``max_new_tokens`` is part of the behaviour policy: a response cut at the cap is a sequence of the capped
process (probability = product over its tokens, no EOS term). A target policy is therefore evaluated with the same
cap, and ``prompt_token_ids`` are logged so the target sees exactly the same context.

How the log-probs are recorded: after sampling, one full teacher-forced forward pass in fp32 over the
(prompt, response) batch — as ``PPOTrainer._forward_chunks`` does for the old log-probs — rather than the
incremental KV-cache logits of generation, so the recorded values equal what a later teacher-forced rescoring of
the same ids by the same policy gives (to float32 rounding, ~1e-6), which is what the importance weights compare.

:func:`simulate_log` produces such a log from held-out prompts (``rlhf ope --simulate`` and the demo); in production
the serving logs and the human audits in the landing zone feed it. :func:`validate_log` checks either. The
``human_label`` column is the outcome of ``evaluate_target(..., outcome="human")`` (doubly robust, with the reward
model mapped onto the label's scale; :mod:`.sequence_ope`). No Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from rlhf_assets.policy.inference import PolicySource, policy_from, rollout
from rlhf_assets.policy.reward_fn import RewardLike, as_reward_fn

__all__ = [
    "LOG_SCHEMA",
    "REQUIRED_NON_NULL",
    "simulate_log",
    "validate_log",
]

LOG_SCHEMA: dict[str, pl.DataType] = {
    "prompt": pl.String(),
    "prompt_token_ids": pl.List(pl.Int64()),
    "response": pl.String(),
    "response_token_ids": pl.List(pl.Int64()),
    "behavior_token_logprobs": pl.List(pl.Float64()),
    "behavior_logprob": pl.Float64(),
    "reward": pl.Float64(),
    "human_label": pl.Float64(),
    "policy_id": pl.String(),
    "temperature": pl.Float64(),
    "max_new_tokens": pl.Int64(),
}
#: Every column except ``human_label`` must be present on every row.
REQUIRED_NON_NULL = tuple(c for c in LOG_SCHEMA if c != "human_label")

# log-softmax in float32 can round a probability-1 token to a tiny positive log-prob.
_LOGP_TOL = 1e-4
_SUM_TOL = 1e-4  # |behavior_logprob − Σ token log-probs| allowed, per token



# ------------------------------------------------------------------------------------------------ validation


def _rows(mask: pl.Series, limit: int = 5) -> str:
    idx = np.flatnonzero(mask.fill_null(True).to_numpy())
    more = f" … ({idx.size} rows)" if idx.size > limit else ""
    return ", ".join(str(int(i)) for i in idx[:limit]) + more


def validate_log(df: pl.DataFrame) -> pl.DataFrame:
    """The log cast to :data:`LOG_SCHEMA` (columns in schema order, extra columns kept after), or a ValueError
    that names the column, the problem and the first offending rows.

    Checked: every column present and castable; no nulls except in ``human_label``; at least 2 rows (off-policy
    estimates need them); non-empty prompt and response ids, ids ≥ 0; one behaviour log-prob per response token,
    each finite and ≤ 0; ``behavior_logprob`` equal to their sum; ``reward`` and ``human_label`` finite;
    ``temperature`` finite and > 0; responses no longer than ``max_new_tokens``.
    """
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"a logged-sample table must be a polars DataFrame; got {type(df).__name__}")
    missing = [c for c in LOG_SCHEMA if c not in df.columns]
    if missing:
        raise ValueError(f"the log lacks column(s) {missing}; expected {list(LOG_SCHEMA)}")
    try:
        cast = df.select([pl.col(c).cast(t, strict=True) for c, t in LOG_SCHEMA.items()])
    except Exception as exc:  # noqa: BLE001 - say which schema failed
        raise ValueError(f"the log does not fit the logged-sample schema {LOG_SCHEMA}: {exc}") from None
    out = pl.concat([cast, df.select([c for c in df.columns if c not in LOG_SCHEMA])], how="horizontal")
    if out.height < 2:
        raise ValueError(f"the log has {out.height} row(s); off-policy evaluation needs at least 2")

    for c in REQUIRED_NON_NULL:
        nulls = out[c].is_null()
        if nulls.any():
            raise ValueError(f"column {c!r} has {int(nulls.sum())} null value(s) (rows {_rows(nulls)}); only "
                             f"'human_label' may be missing")

    def fail(mask: pl.Series, what: str) -> None:
        if mask.fill_null(True).any():
            raise ValueError(f"{what} (rows {_rows(mask)})")

    p_len, r_len = out["prompt_token_ids"].list.len(), out["response_token_ids"].list.len()
    fail(p_len == 0, "'prompt_token_ids' is empty: a response must be conditioned on at least one prompt token")
    fail(r_len == 0, "'response_token_ids' is empty: a response of no tokens has no probability to weigh")
    for c in ("prompt_token_ids", "response_token_ids"):
        fail(out[c].list.min() < 0, f"{c!r} holds negative token ids")
    lp_len = out["behavior_token_logprobs"].list.len()
    fail(lp_len != r_len, "'behavior_token_logprobs' must hold one log-prob per response token; lengths differ")

    flat = out.select(pl.int_range(pl.len()).alias("row"), "behavior_token_logprobs").explode(
        "behavior_token_logprobs")
    tok = flat["behavior_token_logprobs"]
    bad_rows = flat.filter(~tok.is_finite().fill_null(False) | (tok > _LOGP_TOL).fill_null(True))["row"].unique()
    if bad_rows.len():
        rows = ", ".join(str(int(r)) for r in bad_rows.sort().head(5))
        raise ValueError(f"'behavior_token_logprobs' must be finite log-probabilities ≤ 0; rows {rows} are not "
                         f"(a token of probability 0, NaN, or a loss passed instead of a log-prob?)")
    total = out["behavior_token_logprobs"].list.sum()
    fail((out["behavior_logprob"] - total).abs() > _SUM_TOL * r_len.cast(pl.Float64) + 1e-6,
         "'behavior_logprob' must equal the sum of 'behavior_token_logprobs'")
    fail(~out["reward"].is_finite(), "'reward' must be finite")
    labels = out["human_label"]
    fail(labels.is_not_null() & ~labels.is_finite().fill_null(True), "'human_label' must be finite where present")
    t = out["temperature"]
    fail(~t.is_finite() | (t <= 0), "'temperature' must be finite and > 0")
    fail(r_len > out["max_new_tokens"], "a response is longer than its 'max_new_tokens' cap")
    return out


# -------------------------------------------------------------------------------------------------- simulator


def simulate_log(behavior_dir: PolicySource, reward: RewardLike, prompts: Sequence[str], *,
                 samples_per_prompt: int = 1, max_prompt_tokens: int, max_new_tokens: int, temperature: float = 1.0,
                 seed: int = 0, batch_size: int = 32, policy_id: str | None = None,
                 device: str | torch.device = "cpu") -> pl.DataFrame:
    """A validated log of ``samples_per_prompt`` responses per prompt sampled from the behaviour policy.

    ``behavior_dir`` is a policy artifact directory (or an already loaded ``(model, tokenizer)``); ``reward`` a
    ``ProxyReward`` (its calibrated ``raw`` score is logged, without the EOS penalty), a ``RewardScorer`` or a
    callable. Prompts are truncated to their last ``max_prompt_tokens`` tokens, as PPO does. The per-token log-probs
    are those of softmax(logits / ``temperature``), the distribution actually sampled from (module docstring).
    Seeded: the same arguments give the same log. ``human_label`` is null.
    """
    from rlhf_assets.policy.data import encode_prompt

    if int(samples_per_prompt) < 1:
        raise ValueError(f"samples_per_prompt must be ≥ 1; got {samples_per_prompt}")
    if int(max_prompt_tokens) < 1:
        raise ValueError(f"max_prompt_tokens must be ≥ 1; got {max_prompt_tokens}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite and > 0; got {temperature}")
    prompts = [p for p in prompts for _ in range(int(samples_per_prompt))]
    if not prompts:
        raise ValueError("simulate_log needs at least one prompt")
    model, tok, pid = policy_from(behavior_dir, device)
    score = as_reward_fn(reward)
    p_ids = [encode_prompt(tok, p, int(max_prompt_tokens)) for p in prompts]
    empty = [i for i, ids in enumerate(p_ids) if not ids]
    if empty:
        raise ValueError(f"{len(empty)} prompt(s) encode to no tokens (first: {prompts[empty[0]]!r})")
    gen = torch.Generator().manual_seed(int(seed))
    responses, texts, logprobs = rollout(model, tok, p_ids, max_new_tokens=int(max_new_tokens),
                                         temperature=float(temperature), generator=gen, batch_size=batch_size)
    rewards = np.asarray(score(prompts, texts), dtype=np.float64)
    df = pl.DataFrame({
        "prompt": prompts,
        "prompt_token_ids": p_ids,
        "response": texts,
        "response_token_ids": responses,
        "behavior_token_logprobs": [lp.tolist() for lp in logprobs],
        "behavior_logprob": [float(lp.sum()) for lp in logprobs],
        "reward": rewards.tolist(),
        "human_label": [None] * len(prompts),
        "policy_id": [policy_id or pid] * len(prompts),
        "temperature": [float(temperature)] * len(prompts),
        "max_new_tokens": [int(max_new_tokens)] * len(prompts),
    }, schema=LOG_SCHEMA)
    return validate_log(df)
