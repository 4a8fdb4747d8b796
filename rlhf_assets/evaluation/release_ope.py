"""The off-policy evaluation of one release: behaviour = the registry's production policy (the release's own SFT
policy before anything was promoted), target = the release's PPO policy, measured twice on the same log with the
same importance weights:

- ``proxy``: the calibrated reward model PPO optimised (the logged ``reward``). PPO is trained to raise it, so its
  uplift rises even while true quality falls (over-optimisation, bench/overoptimization.py); reported, never gates.
- ``judge``: the held-out judge reward model (trained on the dataset's disjoint ``judge`` split). Every logged
  response is re-scored by it and the direct-method baseline uses it too; its uplift is what gates. It is a raw
  Bradley–Terry score, in other units than the proxy's calibrated one: its sign and interval are what count.

Log source: the serving logs under ``<root>/serving-logs/`` that the behaviour policy produced (``policy_id``
equal to its artifact id), when there are any; otherwise a log simulated from the release's held-out (test-split)
prompts. The log used is stored with the report, so a decision can always be traced to its data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.evaluation.logged import simulate_log, validate_log
from rlhf_assets.evaluation.sequence_ope import evaluate_target, markdown_report, weights_histogram_png
from rlhf_assets.policy.inference import PolicySource, policy_from
from rlhf_assets.policy.reward_fn import ProxyReward, RewardLike, as_reward_fn
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import load_reward_model
from rlhf_assets.storage import Storage

SERVING_LOGS = "serving-logs"
JUDGE_REWARD = "judge_reward"  # the judge's score of each logged response, stored with the log
PROXY_UNITS = "calibrated reward-model score (log-odds scale of P(A ≻ B))"
JUDGE_UNITS = "raw Bradley–Terry score of the judge (uncalibrated, not the proxy's units: read its sign and interval)"
_SIDE_KEYS = ("target", "behavior", "uplift", "snis_value", "direct_method")


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


def serving_log(storage: Storage, behavior_id: str, *, include_canary: bool = False) -> pl.DataFrame | None:
    """The serving-log rows of the production (behaviour) policy ``behavior_id``; None when it has fewer than 2.

    ``include_canary``: also the rows of the registry's ``canary`` policy, when one is set and it served. The log
    then holds both ``policy_id`` values and the caller weights against their mixture (sequence_ope):
    ``evaluate_target(log, target, ..., behaviors={pid: store.get(pid) for pid in log["policy_id"].unique()},
    baseline_policy_id=behavior_id)``. Other policies' rows (an ended canary, an older production) stay out: their
    shares of the traffic the current split produced are not known.
    """
    files = [f for f in storage.list_files(storage.path(SERVING_LOGS)) if f.name.endswith(".parquet")]
    if not files:
        return None
    log = pl.concat([storage.read_parquet(f) for f in files], how="diagonal_relaxed")
    ids = [behavior_id]
    if include_canary:
        canary = Registry(storage).current("canary")
        canary_id = (canary or {}).get("artifacts", {}).get("policy")
        if canary_id:
            ids.append(canary_id)
    if log.filter(pl.col("policy_id") == behavior_id).height < 2:
        return None
    return validate_log(log.filter(pl.col("policy_id").is_in(ids)))


#: Human-labelled log rows needed before the judge's estimate switches to human outcomes.
MIN_HUMAN_LABELS = 30


def proxy_and_judge(log: pl.DataFrame, target: PolicySource, proxy: RewardLike, judge: RewardLike | None = None,
                    *, proxy_id: str | None = None, judge_id: str | None = None,
                    **ope_kwargs: Any) -> tuple[dict[str, Any], pl.DataFrame, list[float]]:
    """:func:`evaluate_target` of ``target`` on ``log`` with the proxy (the logged ``reward``, as logged) and, when
    given, again with the judge (``reward`` replaced by the judge's score of each logged response, the judge as the
    direct-method baseline). ``ope_kwargs`` go to both calls unchanged (same estimator, seed, bootstrap), so the two
    runs share their importance weights and their target samples; only the reward differs.

    Returns (report, the log with a :data:`JUDGE_REWARD` column when judged, the log-weights). The report is the
    proxy's (top-level keys as :func:`evaluate_target`, for compatibility) plus ``proxy`` and ``judge``: each
    ``{"reward_model_id", "units", "target", "behavior", "uplift", "snis_value", "direct_method", "measured"}``;
    an unmeasured judge is ``{"measured": False, "reason"}``.
    """
    target = policy_from(target)  # loaded once for both runs
    report = evaluate_target(log, target, proxy, **ope_kwargs)
    log_w = report.pop("log_weights")
    report["proxy"] = _side(report, proxy_id, PROXY_UNITS)
    if judge is None:
        report["judge"] = {"measured": False, "reason": "no judge reward model given: the judge uplift (the one "
                                                        "that gates) is not measured"}
        return report, log, log_w
    scores = np.asarray(as_reward_fn(judge)(log["prompt"].to_list(), log["response"].to_list()), dtype=np.float64)
    log = log.with_columns(pl.Series(JUDGE_REWARD, scores, dtype=pl.Float64))
    # Human labels beat any model: where the log carries at least MIN_HUMAN_LABELS of them, the judge's estimate is
    # doubly robust with the human label as outcome (the judge only as its direct-method model).
    humans = int(log["human_label"].is_not_null().sum()) if "human_label" in log.columns else 0
    outcome = "human" if humans >= MIN_HUMAN_LABELS else "reward"
    judged = evaluate_target(log.with_columns(pl.col(JUDGE_REWARD).alias("reward")), target, judge,
                             **ope_kwargs, **({"outcome": "human"} if outcome == "human" else {}))
    if not np.allclose(judged.pop("log_weights"), log_w, rtol=0, atol=1e-6):
        raise RuntimeError("the proxy and judge evaluations computed different importance weights on the same log")
    units = f"human labels ({humans} rows; DR with the judge as outcome model)" if outcome == "human" else JUDGE_UNITS
    report["judge"] = {**_side(judged, judge_id, units), "outcome": outcome}
    return report, log, log_w


def _side(report: dict[str, Any], reward_model_id: str | None, units: str) -> dict[str, Any]:
    return {"measured": True, "reward_model_id": reward_model_id, "units": units,
            **{k: report[k] for k in _SIDE_KEYS}}


def evaluate_release(storage: Storage, *, sft_id: str, target_id: str, reward_id: str,
                     calibrator: Mapping[str, Any] | None, prompts: Sequence[str], max_prompt_tokens: int,
                     max_new_tokens: int, judge_id: str | None = None,
                     settings: OPESettings = OPESettings()) -> ReleaseOPE:
    """The release's OPE with the proxy (``reward_id`` + ``calibrator``) and the judge (``judge_id``, raw score);
    without ``judge_id`` the judge uplift is reported as not measured (and the gate fails closed)."""
    store = ArtifactStore(storage)
    behavior_id, origin = behavior_policy_id(storage, sft_id)
    reward = ProxyReward(load_reward_model(store.get(reward_id)), calibrator)
    judge = ProxyReward(load_reward_model(store.get(judge_id))) if judge_id else None  # scale 1: the raw BT score
    log = serving_log(storage, behavior_id, include_canary=True)
    source = f"serving logs ({log.height} rows)" if log is not None else ""
    mixture: dict[str, Any] = {}
    if log is not None and log["policy_id"].n_unique() > 1:
        # production + canary: weigh against their mixture (multiple importance sampling, balance heuristic)
        ids = sorted(log["policy_id"].unique().to_list())
        mixture = {"behaviors": {pid: store.get(pid) for pid in ids}, "baseline_policy_id": behavior_id}
        source += f" from {len(ids)} behaviour policies: " + ", ".join(i[:12] for i in ids)
    if log is None:
        if not prompts:
            raise ValueError("no serving logs for the behaviour policy and no held-out prompts to simulate from")
        chosen = list(prompts)[:settings.n_prompts]
        log = simulate_log(store.get(behavior_id), reward, chosen, samples_per_prompt=settings.samples_per_prompt,
                           max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, seed=settings.seed,
                           policy_id=behavior_id)
        source = f"simulated from {len(chosen)} held-out prompts × {settings.samples_per_prompt}"
    report, log, log_w = proxy_and_judge(
        log, store.get(target_id), reward, judge, proxy_id=reward_id, judge_id=judge_id,
        estimator=settings.estimator, n_boot=settings.n_boot, seed=settings.seed,
        min_ess_share=settings.min_ess_share, max_pareto_k=settings.max_pareto_k, dm_samples=settings.dm_samples,
        target_id=target_id, **mixture)
    report.update({"behavior_policy_id": behavior_id, "behavior_origin": origin, "log_source": source,
                   "target_policy_id": target_id, "reward_model_id": reward_id, "judge_reward_model_id": judge_id,
                   "settings": settings.__dict__})
    png = weights_histogram_png(log_w, ess=report.get("ess"), pareto_k_hat=report.get("pareto_k"))
    return ReleaseOPE(report, log, source, behavior_id, png, markdown_report(report))
