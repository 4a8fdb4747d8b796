"""An independent measurement of a stored policy's KL to its stored reference (the ``kl_within_budget`` check).

PPO keeps only a checkpoint whose KL *it measured* is inside its budget, on its own validation prompts and its own
eval seed, so its ``selected_kl`` is within budget by construction. This module measures again, from the artifacts
alone: both policies are loaded from the artifact store, FRESH responses are sampled from the policy on held-out
prompts (the release's test split, which PPO never saw) with a seed of its own, and

    KL(π ‖ π_ref) ≈ mean over samples y ~ π of Σ_t (log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))

(the Monte-Carlo sequence KL; single samples can be negative, the mean is unbiased). Both log-probs are those of
softmax(logits / T) at PPO's sampling temperature T, the distribution actually sampled (PPO's convention: its
rollouts, its KL penalty and its evals all use logits / T for the policy and the reference alike), teacher-forced
in fp32 as :mod:`rlhf_assets.evaluation.logged` records them. Temperature, prompt truncation and the response cap
are read from the policy artifact's own ``train_config`` unless given. The interval is a seeded bootstrap over
prompts. No Dagster here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from rlhf_assets.config_schema import settings
from rlhf_assets.evaluation.evidence import bootstrap_ci
from rlhf_assets.evaluation.sequence_ope import check_same_tokenizer
from rlhf_assets.jsonsafe import finite_or_none
from rlhf_assets.policy.artifacts import load_policy
from rlhf_assets.policy.data import encode_prompt
from rlhf_assets.policy.inference import rollout, teacher_forced_logprobs
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.storage import Storage

#: Default sampling seed of the measurement: its own stream, not PPO's rollout or eval seeds.
KL_CHECK_SEED = 20_251_126
#: Default number of held-out prompts measured.
KL_CHECK_PROMPTS = 64
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@settings
class KLCheckSettings:
    """How the ``kl_within_budget`` check samples (its limit is the release's; see evaluation/thresholds.py)."""

    kl_check_prompts: Annotated[int, Field(ge=1)] = KL_CHECK_PROMPTS
    """Held-out (test-split) prompts the stored policy is sampled on to measure its KL."""
    kl_check_samples_per_prompt: Annotated[int, Field(ge=1)] = 1
    """Fresh responses sampled per prompt (the bootstrap resamples prompts)."""
    kl_check_seed: Annotated[int, Field(ge=0)] = KL_CHECK_SEED
    """The measurement's own sampling seed (not PPO's rollout or eval seeds)."""


def _setting(train_config: dict, name: str, given: Any) -> Any:
    if given is not None:
        return given
    if name not in train_config:
        raise ValueError(f"the policy artifact's train_config has no {name!r}; pass {name}= explicitly")
    return train_config[name]


def measure_kl(storage: Storage, policy_id: str, reference_id: str, prompts: Sequence[str], *,
               n_prompts: int = KL_CHECK_PROMPTS, samples_per_prompt: int = 1, seed: int = KL_CHECK_SEED,
               temperature: float | None = None, max_prompt_tokens: int | None = None,
               max_new_tokens: int | None = None, n_boot: int = 1000, confidence: float = 0.95,
               bootstrap_seed: int = 0, batch_size: int = 32, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Monte-Carlo KL(policy ‖ reference) per sequence (nats), measured on fresh samples of the stored policy.

    ``prompts``: held-out prompts; the first ``n_prompts`` distinct ones are used, each sampled
    ``samples_per_prompt`` times with a ``torch.Generator`` seeded with ``seed`` (same arguments → same numbers).
    The interval is the percentile bootstrap (``n_boot``, ``confidence``, ``bootstrap_seed``) of the mean over
    prompts (a prompt's samples are resampled together).

    Returns a JSON-safe dict (non-finite → None): ``value`` (mean per-sample KL), ``ci_low``, ``ci_high``,
    ``confidence``, ``n_prompts``, ``samples``, ``seed``, ``temperature``, ``max_new_tokens``, ``quantiles``
    (of the per-sample KLs: ``q0`` … ``q100``), ``policy_id``, ``reference_id``.
    """
    if int(n_prompts) < 1 or int(samples_per_prompt) < 1:
        raise ValueError(f"n_prompts and samples_per_prompt must be ≥ 1; got {n_prompts}, {samples_per_prompt}")
    store = ArtifactStore(storage)
    model, tok, doc = load_policy(store.get(policy_id), device)
    ref, ref_tok, _ = load_policy(store.get(reference_id), device)
    model.eval()
    ref.eval()
    check_same_tokenizer(tok, ref_tok)  # a KL compares probabilities of the same token ids
    train_config = doc.get("train_config") or {}
    t = float(_setting(train_config, "temperature", temperature))
    cap = int(_setting(train_config, "max_new_tokens", max_new_tokens))
    p_max = int(_setting(train_config, "max_prompt_tokens", max_prompt_tokens))
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be finite and > 0; got {t}")

    chosen = list(dict.fromkeys(prompts))[:int(n_prompts)]
    if not chosen:
        raise ValueError("no held-out prompts to measure the KL on")
    p_ids = [encode_prompt(tok, p, p_max) for p in chosen]
    if any(not ids for ids in p_ids):
        raise ValueError("a held-out prompt encodes to no tokens")
    reps = int(samples_per_prompt)
    rows = [ids for ids in p_ids for _ in range(reps)]
    gen = torch.Generator().manual_seed(int(seed))
    responses, _, policy_lp = rollout(model, tok, rows, max_new_tokens=cap, temperature=t, generator=gen,
                                      batch_size=batch_size)
    ref_lp = teacher_forced_logprobs(ref, rows, responses, tok.pad_token_id, temperature=t, batch_size=batch_size)
    kl = np.array([float((a - b).sum()) for a, b in zip(policy_lp, ref_lp)], dtype=np.float64)
    per_prompt = kl.reshape(len(chosen), reps).mean(axis=1)
    lo, hi = bootstrap_ci(lambda x: float(np.mean(x)), [per_prompt], n_boot=int(n_boot), seed=int(bootstrap_seed),
                          confidence=float(confidence))
    return {
        "value": finite_or_none(float(kl.mean())), "ci_low": finite_or_none(lo), "ci_high": finite_or_none(hi),
        "confidence": float(confidence), "n_prompts": len(chosen), "samples": int(kl.size), "seed": int(seed),
        "temperature": t, "max_new_tokens": cap,
        "quantiles": {f"q{round(100 * q)}": finite_or_none(float(np.quantile(kl, q))) for q in QUANTILES},
        "policy_id": policy_id, "reference_id": reference_id,
    }
