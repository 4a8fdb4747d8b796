"""The off-policy evaluation of one release: behaviour = the registry's production policy (the release's own SFT
policy before anything was promoted), target = the release's PPO policy, reward = its calibrated reward model.

Log source: the serving logs under ``<root>/serving-logs/`` that the behaviour policy produced (``policy_id``
equal to its artifact id), when there are any; otherwise a log simulated from the release's held-out (test-split)
prompts. The log used is stored with the report, so a decision can always be traced to its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import polars as pl

from rlhf_assets.evaluation.logged import simulate_log, validate_log
from rlhf_assets.evaluation.sequence_ope import evaluate_target, markdown_report, weights_histogram_png
from rlhf_assets.policy.reward_fn import ProxyReward
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.evaluate import load_reward_model
from rlhf_assets.storage import Storage

SERVING_LOGS = "serving-logs"


@dataclass(frozen=True)
class OPESettings:
    n_prompts: int = 128
    samples_per_prompt: int = 2
    estimator: str = "sndr"
    n_boot: int = 1000
    min_ess_share: float = 0.1
    max_pareto_k: float = 0.7
    dm_samples: int = 2
    seed: int = 0


@dataclass
class ReleaseOPE:
    report: dict[str, Any]      # JSON-safe, without the per-row log weights
    log: pl.DataFrame
    log_source: str
    behavior_id: str
    weights_png: bytes
    markdown: str


def behavior_policy_id(storage: Storage, fallback_sft_id: str) -> tuple[str, str]:
    """(artifact id, where it came from): the production alias's policy, else the release's SFT policy."""
    holder = Registry(storage).current("production")
    if holder and holder.get("artifacts", {}).get("policy"):
        return holder["artifacts"]["policy"], f"production alias ({holder['release']})"
    return fallback_sft_id, "the release's SFT policy (nothing promoted yet)"


def serving_log(storage: Storage, behavior_id: str) -> Optional[pl.DataFrame]:
    files = [f for f in storage.list_files(storage.path(SERVING_LOGS)) if f.name.endswith(".parquet")]
    if not files:
        return None
    log = pl.concat([storage.read_parquet(f) for f in files], how="diagonal_relaxed")
    log = log.filter(pl.col("policy_id") == behavior_id)
    return validate_log(log) if log.height >= 2 else None


def evaluate_release(storage: Storage, *, sft_id: str, target_id: str, reward_id: str,
                     calibrator: Optional[Mapping[str, Any]], prompts: Sequence[str], max_prompt_tokens: int,
                     max_new_tokens: int, settings: OPESettings = OPESettings()) -> ReleaseOPE:
    store = ArtifactStore(storage)
    behavior_id, origin = behavior_policy_id(storage, sft_id)
    reward = ProxyReward(load_reward_model(store.get(reward_id)), calibrator)
    log = serving_log(storage, behavior_id)
    source = f"serving logs ({log.height} rows)" if log is not None else ""
    if log is None:
        if not prompts:
            raise ValueError("no serving logs for the behaviour policy and no held-out prompts to simulate from")
        chosen = list(prompts)[:settings.n_prompts]
        log = simulate_log(store.get(behavior_id), reward, chosen, samples_per_prompt=settings.samples_per_prompt,
                           max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, seed=settings.seed,
                           policy_id=behavior_id)
        source = f"simulated from {len(chosen)} held-out prompts × {settings.samples_per_prompt}"
    report = evaluate_target(log, store.get(target_id), reward, estimator=settings.estimator, n_boot=settings.n_boot,
                             seed=settings.seed, min_ess_share=settings.min_ess_share,
                             max_pareto_k=settings.max_pareto_k, dm_samples=settings.dm_samples, target_id=target_id)
    log_w = report.pop("log_weights")
    report.update({"behavior_policy_id": behavior_id, "behavior_origin": origin, "log_source": source,
                   "target_policy_id": target_id, "reward_model_id": reward_id, "settings": settings.__dict__})
    png = weights_histogram_png(log_w, ess=report.get("ess"), pareto_k_hat=report.get("pareto_k"))
    return ReleaseOPE(report, log, source, behavior_id, png, markdown_report(report))
