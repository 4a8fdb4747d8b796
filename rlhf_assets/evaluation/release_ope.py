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

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from rlhf_assets.config_schema import settings
from rlhf_assets.evaluation.logged import simulate_log, validate_log
from rlhf_assets.evaluation.sequence_ope import evaluate_target, markdown_report, weights_histogram_png
from rlhf_assets.policy.inference import PolicySource, policy_from
from rlhf_assets.policy.reward_fn import ProxyReward, RewardLike, as_reward_fn
from rlhf_assets.references import OPERef
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import load_reward_model
from rlhf_assets.storage import Storage

SERVING_LOGS = "serving-logs"
OPE_LOG = "ope_log"  # tables/ope_log/<release>.parquet: the log a release's OPE was computed on
JUDGE_REWARD = "judge_reward"  # the judge's score of each logged response, stored with the log
PROXY_UNITS = "calibrated reward-model score (log-odds scale of P(A ≻ B))"
JUDGE_UNITS = "raw Bradley–Terry score of the judge (uncalibrated, not the proxy's units: read its sign and interval)"
_SIDE_KEYS = ("target", "behavior", "uplift", "snis_value", "direct_method")


@settings
class OPESettings:
    """How a release's off-policy evaluation is computed (the uplift threshold is the release_thresholds
    resource's)."""

    n_prompts: Annotated[int, Field(ge=1)] = 128
    """Held-out (test-split) prompts a simulated log is drawn from when there are no serving logs."""
    samples_per_prompt: Annotated[int, Field(ge=1)] = 2
    """Behaviour-policy responses sampled per prompt for a simulated log."""
    estimator: Literal["is", "snis", "clipped_is", "dr", "sndr"] = "sndr"
    """The estimator whose value and interval are reported and gated."""
    n_boot: Annotated[int, Field(ge=100)] = 1000
    """Bootstrap resamples of the estimate's interval."""
    min_ess_share: Annotated[float, Field(ge=0, le=1)] = 0.1
    """The estimate is 'unreliable' when the effective sample size is below this share of the log."""
    max_pareto_k: Annotated[float, Field(gt=0)] = 0.7
    """The estimate is 'unreliable' when the PSIS tail index k̂ exceeds this."""
    dm_samples: Annotated[int, Field(ge=1)] = 2
    """Target-policy samples per prompt for the direct-method (reward-model) baseline of the DR estimators."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the simulated log, the target samples and the bootstrap."""


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
    from rlhf_assets.policy_serving.log import policy_log_files

    files = [f for f in storage.list_files(storage.path(SERVING_LOGS)) if f.name.endswith(".parquet")]
    files += policy_log_files(storage)  # what `rlhf serve-policy` served (serving-logs/policy/date=…/)
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


def token_limits(policy_dir: Path, max_prompt_tokens: int | None = None,
                 max_new_tokens: int | None = None) -> tuple[int, int]:
    """(prompt tokens kept, response cap) for sampling like ``policy_dir`` was trained: from its manifest's
    training config unless given."""
    config = {}
    manifest = Path(policy_dir) / "manifest.json"
    if manifest.exists():
        config = json.loads(manifest.read_text()).get("config") or {}
    limits = []
    for name, given in (("max_prompt_tokens", max_prompt_tokens), ("max_new_tokens", max_new_tokens)):
        value = given if given is not None else config.get(name)
        if value is None:
            raise ValueError(f"{policy_dir}: its training config has no {name}; give it explicitly")
        limits.append(int(value))
    return limits[0], limits[1]


def evaluate_release(storage: Storage, *, target: str, reward_model: str, calibrator: Mapping[str, Any] | None,
                     prompts: Sequence[str], judge: str | None = None, sft: str | None = None,
                     behavior: str | None = None, simulate: bool = False, max_prompt_tokens: int | None = None,
                     max_new_tokens: int | None = None, settings: OPESettings | None = None) -> ReleaseOPE:
    """The release's OPE with the proxy (``reward_model`` + ``calibrator``) and the judge (``judge``, raw score);
    without ``judge`` the judge uplift is reported as not measured (and the gate fails closed). What ope_report
    and ``rlhf ope`` both run.

    Models are artifact ids (or unique prefixes, ``latest``, or artifact directories). Behaviour policy: ``behavior``
    when given, else the registry's production policy, else ``sft`` (the release's own SFT policy before anything
    was promoted). Log: the behaviour policy's serving logs (with the canary's, weighed as a mixture), unless
    ``simulate`` or there are none: then sampled from the behaviour policy on ``prompts`` (at most
    ``settings.n_prompts``). Token limits are the target's training config's unless given."""
    settings = settings or OPESettings()
    store = ArtifactStore(storage)
    target_dir = store.resolve(target, kind="ppo_policy")
    reward_dir = store.resolve(reward_model, kind="reward_model")
    judge_dir = store.resolve(judge, kind="judge_reward_model") if judge else None
    if judge_dir is not None and judge_dir.resolve() == reward_dir.resolve():
        raise ValueError("the judge is the proxy reward model itself: the judge must be a model the policy was not "
                         "trained on (the release's judge_reward_model)")
    if behavior is not None:
        behavior_dir = store.resolve(behavior)
        behavior_id, origin = behavior_dir.name, "given"
    else:
        fallback = store.resolve_id(sft, kind="sft_policy") if sft else ""
        behavior_id, origin = behavior_policy_id(storage, fallback)
        if not behavior_id:
            raise ValueError("nothing is in production: give the release's SFT policy as the behaviour policy")
        behavior_dir = store.get(behavior_id)
    prompt_tokens, new_tokens = token_limits(target_dir, max_prompt_tokens, max_new_tokens)
    proxy = ProxyReward(load_reward_model(reward_dir), calibrator)
    judge_reward = ProxyReward(load_reward_model(judge_dir)) if judge_dir is not None else None  # raw BT score
    log = None if simulate else serving_log(storage, behavior_id, include_canary=True)
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
        log = simulate_log(behavior_dir, proxy, chosen, samples_per_prompt=settings.samples_per_prompt,
                           max_prompt_tokens=prompt_tokens, max_new_tokens=new_tokens, seed=settings.seed,
                           policy_id=behavior_id)
        source = f"simulated from {len(chosen)} held-out prompts × {settings.samples_per_prompt}"
    target_id, reward_id = target_dir.name, reward_dir.name
    judge_id = judge_dir.name if judge_dir is not None else None
    report, log, log_w = proxy_and_judge(
        log, target_dir, proxy, judge_reward, proxy_id=reward_id, judge_id=judge_id,
        estimator=settings.estimator, n_boot=settings.n_boot, seed=settings.seed,
        min_ess_share=settings.min_ess_share, max_pareto_k=settings.max_pareto_k, dm_samples=settings.dm_samples,
        target_id=target_id, **mixture)
    report.update({"behavior_policy_id": behavior_id, "behavior_origin": origin, "log_source": source,
                   "target_policy_id": target_id, "reward_model_id": reward_id, "judge_reward_model_id": judge_id,
                   "settings": dataclasses.asdict(settings)})
    png = weights_histogram_png(log_w, ess=report.get("ess"), pareto_k_hat=report.get("pareto_k"))
    return ReleaseOPE(report, log, source, behavior_id, png, markdown_report(report))


def store_release_ope(storage: Storage, release: str, result: ReleaseOPE) -> OPERef:
    """Keep the log a release's OPE was computed on (``tables/ope_log/<release>.parquet``) and return the reference
    ope_report stores: the report with the log's place and content hash, so a decision traces to its data."""
    path = storage.table_path(OPE_LOG, release)
    digest = storage.write_parquet(path, result.log)
    report = {**result.report, "log_path": str(path), "log_sha256": digest}
    return OPERef(report=report, log_uri=str(path), log_sha256=digest)
