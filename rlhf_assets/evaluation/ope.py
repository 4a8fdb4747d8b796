"""Off-policy estimates of a target policy's expected reward from responses logged under a behaviour policy.

Each logged sample i carries the sequence log-probability of its response under the target policy
(``logp_target``) and under the behaviour policy that produced it (``logp_behavior``) — sums of per-token
log-probabilities, see :func:`sequence_logprob` — and the observed reward ``rewards``. The doubly robust estimators
also take the reward model's direct-method baseline: ``q_logged`` (its prediction for the logged response) and
``v_target`` (its estimate of the target policy's expected reward on that prompt, e.g. the mean RM score of a few
target samples).

Why log space: a sequence log-probability is a sum over hundreds of tokens, so −5000 is ordinary and
exp(logp_target) / exp(logp_behavior) is 0 / 0. Only the difference log w = logp_target − logp_behavior is ever
formed, clipping is done on log w, and everything else uses a max shift or logsumexp, so nothing overflows unless
the answer itself does (plain IS with a weight beyond 1e308).

Estimators (``w = exp(log w)``; :data:`ESTIMATORS`):

- ``is``          mean(w·r)                          unbiased, the highest variance
- ``snis``        Σ w·r / Σ w                        self-normalised: slightly biased, stays within the reward range
- ``clipped_is``  mean(min(w, clip)·r)               trades bias (towards 0) for variance
- ``dr``          mean(v_target + w·(r − q_logged))  unbiased when either the weights or the baseline are right
- ``sndr``        DR with the weights normalised to mean 1 (the default: the most stable in practice)

Diagnostics, on the raw (unclipped) weights: the effective sample size ESS = (Σw)² / Σw², and the Pareto k̂ of
PSIS (Vehtari et al. 2015/2024) — the shape of a generalized Pareto fitted to the largest weights. 1/k̂ estimates
how many moments of the weight distribution are finite; above 0.7 the estimate converges too slowly to be trusted
at any practical n, however many samples the ESS suggests. :func:`estimate_policy_value` therefore *refuses*
(``reliable=False`` with a ``reason``) when k̂ > max_pareto_k or ESS < min_ess_share·n: the value is still
reported, but a deployment gate must not act on it. :func:`uplift` compares the target with the behaviour policy
(the plain mean of the logged rewards, or a baseline policy's own weighted estimate) under a paired bootstrap.

Several behaviour policies (a canary serving a share of the traffic beside production): multiple importance
sampling with the balance heuristic (Veach & Guibas 1995) takes the mixture as the behaviour density,
q(y|x) = Σ_j s_j π_j(y|x) with s_j = n_j / n the policies' shares of the log (:func:`mixture_logprob`), every row
scored by EVERY policy. Unbiased when the traffic split does not depend on the prompt (a random split at fixed
shares over the log's period). Since q ≥ s_j π_j, a target equal to policy j has weights ≤ 1/s_j: a canary's own
samples bound the tail that makes a production-only log refuse it.

Outcomes other than the logged reward (human labels) use the same estimators with ``rewards`` = the label and,
for DR, a direct-method model on the label's scale: :func:`linear_outcome_map` maps the reward model onto it.

No Dagster here; the ``ope_report`` asset calls these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax

from rlhf_assets.arrays import float_vector
from rlhf_assets.evaluation.evidence import resampled
from rlhf_assets.jsonsafe import finite_or_none

__all__ = [
    "ESTIMATORS",
    "OPEEstimate",
    "UpliftEstimate",
    "bootstrap_ci",
    "effective_sample_size",
    "estimate_policy_value",
    "fit_generalized_pareto",
    "linear_outcome_map",
    "log_importance_weights",
    "mixture_logprob",
    "pareto_k",
    "policy_value",
    "sequence_logprob",
    "uplift",
]

ESTIMATORS = ("is", "snis", "clipped_is", "dr", "sndr")
_NEEDS_BASELINE = ("dr", "sndr")
# A discrete sequence has probability ≤ 1, so its log-probability is ≤ 0; allow float32 log_softmax rounding.
_LOGP_TOL = 1e-3


# --------------------------------------------------------------------------------------------------- validation


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = float_vector(x, name, " (one value per logged sample)")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) of {arr.size}; drop or fix those samples first")
    return arr


def _check_logp(x: Any, name: str) -> np.ndarray:
    lp = _as_1d(x, name)
    n_pos = int((lp > _LOGP_TOL).sum())
    if n_pos:
        raise ValueError(f"{name} has {n_pos} positive value(s) (max {lp.max():.4g}); a sequence log-probability "
                         f"is ≤ 0 — was a negative log-likelihood (a loss) passed instead?")
    return lp


def _check_rest(n: int, rewards: Any, q_logged: Any, v_target: Any
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validated (rewards, q_logged, v_target) for n logged samples; the baseline is both or neither."""
    r = _as_1d(rewards, "rewards")
    if r.size != n:
        raise ValueError(f"rewards has {r.size} values for {n} logged samples")
    if (q_logged is None) != (v_target is None):
        raise ValueError("q_logged and v_target come together (the reward model's baseline for the doubly robust "
                         "estimators); pass both or neither")
    if q_logged is None:
        return r, None, None
    q, v = _as_1d(q_logged, "q_logged"), _as_1d(v_target, "v_target")
    for name, arr in (("q_logged", q), ("v_target", v)):
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} values for {n} logged samples")
    return r, q, v


def _check_estimator(estimator: str, q: np.ndarray | None, clip: float) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {list(ESTIMATORS)}")
    if estimator in _NEEDS_BASELINE and q is None:
        raise ValueError(f"estimator {estimator!r} needs q_logged and v_target (the reward model's baseline); "
                         f"pass them or use 'snis'")
    if not clip > 0:  # also catches NaN
        raise ValueError(f"clip must be > 0 (the largest importance weight kept); got {clip}")


def _check_bootstrap(n_boot: int, level: float) -> None:
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer; got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")


# ------------------------------------------------------------------------------------------ log-probabilities


def sequence_logprob(token_logprobs: Any, mask: Any = None) -> np.ndarray:
    """Sequence log-probabilities (n,) from per-token log-probabilities (n, T): the sum over the masked tokens.

    ``mask`` (n, T) marks the response tokens (1/True); positions outside it may hold anything (padding, NaN,
    −inf) and are ignored, which is why this is a ``where``, not a product (−inf · 0 is NaN). Without a mask every
    position counts. A row with no response token is refused: its probability would silently be 1.
    """
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"token_logprobs must be two-dimensional (sequences × tokens); got shape {lp.shape}")
    if mask is None:
        m = np.ones(lp.shape, dtype=bool)
    else:
        raw = np.asarray(mask)
        if raw.shape != lp.shape:
            raise ValueError(f"mask has shape {raw.shape}, token_logprobs {lp.shape}")
        if not np.isin(raw, (0, 1)).all():
            raise ValueError("mask must hold only 0/1 (or False/True)")
        m = raw.astype(bool)
    empty = np.flatnonzero(~m.any(axis=1))
    if empty.size:
        raise ValueError(f"{empty.size} sequence(s) have no masked token (first: row {int(empty[0])})")
    used = lp[m]
    if not np.all(np.isfinite(used)):
        raise ValueError(f"token_logprobs has {int((~np.isfinite(used)).sum())} non-finite value(s) inside the "
                         f"mask (a token with probability 0 under the policy?)")
    if used.max() > _LOGP_TOL:
        raise ValueError(f"token_logprobs has positive values inside the mask (max {used.max():.4g}); "
                         f"log-probabilities are ≤ 0")
    return np.where(m, lp, 0.0).sum(axis=1)


def log_importance_weights(logp_target: Any, logp_behavior: Any) -> np.ndarray:
    """log w = logp_target − logp_behavior, validated: finite, ≤ 0 inputs of equal length, n ≥ 2."""
    lt, lb = _check_logp(logp_target, "logp_target"), _check_logp(logp_behavior, "logp_behavior")
    if lt.size != lb.size:
        raise ValueError(f"logp_target and logp_behavior differ in length: {lt.size} vs {lb.size}")
    if lt.size < 2:
        raise ValueError(f"off-policy evaluation needs at least 2 logged samples; got {lt.size}")
    return lt - lb


def mixture_logprob(logp_components: Any, shares: Any) -> np.ndarray:
    """log q = log Σ_j s_j π_j(y_i|x_i) per row (n,): the behaviour density of a log that mixes J policies in the
    shares s_j (the balance heuristic of multiple importance sampling; module docstring).

    ``logp_components`` (n, J) holds each row's sequence log-probability under EVERY behaviour policy, not only
    under the one that produced it; ``shares`` (J,) are positive and sum to 1 (n_j / n: the log's row counts).
    """
    lp = np.asarray(logp_components, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] < 1:
        raise ValueError(f"logp_components must be two-dimensional (rows × behaviour policies); got shape {lp.shape}")
    if not np.all(np.isfinite(lp)):
        raise ValueError(f"logp_components has {int((~np.isfinite(lp)).sum())} non-finite value(s)")
    if lp.max() > _LOGP_TOL:
        raise ValueError(f"logp_components has positive values (max {lp.max():.4g}); log-probabilities are ≤ 0")
    s = _as_1d(shares, "shares")
    if s.size != lp.shape[1]:
        raise ValueError(f"{s.size} shares for {lp.shape[1]} behaviour policies")
    if np.any(s <= 0) or abs(s.sum() - 1.0) > 1e-9:
        raise ValueError(f"shares must be positive and sum to 1 (the policies' shares of the log); got {s.tolist()}")
    return logsumexp(lp + np.log(s), axis=1)


def linear_outcome_map(scores: Any, labels: Any) -> dict[str, float]:
    """Least-squares fit label ≈ intercept + slope·score: the reward model mapped onto a human label's scale, the
    direct-method model of a doubly robust estimate whose outcome is the label.

    Returns {intercept, slope, r2, n}. Constant scores carry no information about the label: slope 0, intercept =
    the mean label. A negative slope is kept (the RM and the humans disagree, and the DR estimate must know it).
    """
    x, y = _as_1d(scores, "scores"), _as_1d(labels, "labels")
    if x.size != y.size:
        raise ValueError(f"{x.size} scores for {y.size} labels")
    if x.size < 2:
        raise ValueError(f"a linear outcome map needs at least 2 labelled rows; got {x.size}")
    xc, yc = x - x.mean(), y - y.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ yc) / sxx if sxx > 0 else 0.0
    intercept = float(y.mean() - slope * x.mean())
    syy = float(yc @ yc)
    resid = y - (intercept + slope * x)
    r2 = 1.0 - float(resid @ resid) / syy if syy > 0 else 1.0
    return {"intercept": intercept, "slope": slope, "r2": r2, "n": int(x.size)}


# ------------------------------------------------------------------------------------------------- estimators
# Each kernel works along the last axis, so the same code gives the point estimate (n,) and a whole batch of
# bootstrap resamples (B, n) at once.


def _signed_exp_mean(log_w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """mean(exp(log_w)·x) along the last axis, computed as sign · exp(max + log|shifted mean|)."""
    top = log_w.max(axis=-1)
    s = np.mean(np.exp(log_w - top[..., None]) * x, axis=-1)
    with np.errstate(divide="ignore", over="ignore"):
        return np.sign(s) * np.exp(top + np.log(np.abs(s)))


def _self_normalized_mean(log_w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sum(softmax(log_w, axis=-1) * x, axis=-1)


def _kernel(estimator: str, log_clip: float) -> Callable[..., np.ndarray]:
    """The estimator as f(log_w, r, q, v) → value along the last axis."""
    kernels: dict[str, Callable[..., np.ndarray]] = {
        "is": lambda lw, r, q, v: _signed_exp_mean(lw, r),
        "snis": lambda lw, r, q, v: _self_normalized_mean(lw, r),
        "clipped_is": lambda lw, r, q, v: _signed_exp_mean(np.minimum(lw, log_clip), r),
        "dr": lambda lw, r, q, v: v.mean(axis=-1) + _signed_exp_mean(lw, r - q),
        "sndr": lambda lw, r, q, v: v.mean(axis=-1) + _self_normalized_mean(lw, r - q),
    }
    return kernels[estimator]


def policy_value(log_w: Any, rewards: Any, q_logged: Any = None, v_target: Any = None, *,
                 estimator: str = "sndr", clip: float = 100.0) -> float:
    """One point estimate of the target policy's value from log importance weights (see the module docstring).

    ``clip`` is the largest weight ``clipped_is`` keeps (other estimators ignore it). For the diagnostics, the
    refusal rule and a confidence interval, use :func:`estimate_policy_value`.
    """
    lw = _as_1d(log_w, "log_w")
    if lw.size < 2:
        raise ValueError(f"off-policy evaluation needs at least 2 logged samples; got {lw.size}")
    r, q, v = _check_rest(lw.size, rewards, q_logged, v_target)
    _check_estimator(estimator, q, clip)
    return float(_kernel(estimator, math.log(clip))(lw, r, q, v))


# ------------------------------------------------------------------------------------------------ diagnostics


def effective_sample_size(log_w: Any) -> float:
    """ESS = (Σw)² / Σw², as exp(2·logsumexp(log w) − logsumexp(2·log w)): n for equal weights, 1 when one
    weight dominates."""
    lw = _as_1d(log_w, "log_w")
    if lw.size == 0:
        raise ValueError("log_w is empty")
    return float(np.exp(2.0 * logsumexp(lw) - logsumexp(2.0 * lw)))


def fit_generalized_pareto(exceedances: Any) -> tuple[float, float]:
    """(k, σ) of a generalized Pareto fitted to positive exceedances by Zhang & Stephens (2009), as PSIS does it.

    A posterior mean of θ = −k/σ over a grid of 30 + √n values, weighted by the profile likelihood, then k̂ from
    θ̂ and the weakly informative prior of Vehtari et al. (k shrunk towards 0.5 by 10 pseudo-observations) — the
    same computation as arviz's ``_gpdfit`` and loo's ``gpdfit``. k > 0 is a heavy (power-law) tail with 1/k
    finite moments; k < 0 a bounded one.
    """
    x = np.sort(_as_1d(exceedances, "exceedances"))
    n = x.size
    if n < 5:
        raise ValueError(f"a generalized Pareto fit needs at least 5 exceedances; got {n}")
    if x[0] <= 0:
        raise ValueError("exceedances must be positive (values above the threshold minus the threshold)")
    prior_bs, prior_k = 3.0, 10.0
    m = 30 + int(math.sqrt(n))
    theta = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    theta = theta / (prior_bs * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        k_grid = np.log1p(-theta[:, None] * x).mean(axis=1)
        profile = n * (np.log(-theta / k_grid) - k_grid - 1.0)
    profile = np.where(np.isfinite(profile), profile, -np.inf)
    weights = softmax(profile)  # w_j = 1 / Σ_i exp(l_i − l_j)
    weights = np.where(weights >= 10 * np.finfo(np.float64).eps, weights, 0.0)  # as arviz: drop negligible
    weights /= weights.sum()
    theta_hat = float(np.sum(theta * weights))
    k_hat = float(np.log1p(-theta_hat * x).mean())
    sigma = -k_hat / theta_hat
    return (n * k_hat + prior_k * 0.5) / (n + prior_k), float(sigma)


def pareto_k(log_w: Any) -> float:
    """PSIS's Pareto k̂ of the importance weights (Vehtari et al. 2015/2024, the tail as in arviz's ``psislw``).

    The generalized Pareto is fitted to the M = ⌈min(n/5, 3√n)⌉ largest weights, as exceedances over the next
    largest. Returns ``inf`` when that tail has fewer than 5 distinct weights (n < 21, or ties): the tail cannot be
    diagnosed, so it must not pass as safe. Returns ``-inf`` for constant weights (target ≡ behaviour): there is
    no tail at all, and on-policy data is as reliable as data gets.
    """
    lw = _as_1d(log_w, "log_w")
    if lw.size == 0:
        raise ValueError("log_w is empty")
    if np.ptp(lw) == 0.0:
        return -math.inf
    n = lw.size
    m = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    lw = np.sort(lw - lw.max())
    cutoff = max(lw[-m - 1], math.log(np.finfo(np.float64).tiny))
    tail = lw[lw > cutoff]
    if tail.size < 5:
        return math.inf
    k, _ = fit_generalized_pareto(math.exp(cutoff) * np.expm1(tail - cutoff))
    return k


def _weights_summary(log_w: np.ndarray, log_clip: float) -> dict[str, float]:
    n = log_w.size
    with np.errstate(over="ignore"):
        return {
            "mean": float(np.exp(logsumexp(log_w) - math.log(n))),
            "median": float(np.exp(np.median(log_w))),
            "min": float(np.exp(log_w.min())),
            "max": float(np.exp(log_w.max())),
            "log_max": float(log_w.max()),
            "max_share": float(np.exp(log_w.max() - logsumexp(log_w))),  # the largest normalised weight
            "n_clipped": int((log_w > log_clip).sum()),
        }


# -------------------------------------------------------------------------------------------------- bootstrap


def _percentile_interval(boots: np.ndarray, level: float) -> tuple[float, float]:
    if boots.size == 0:
        return math.nan, math.nan
    alpha = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boots, [alpha, 100.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(statistic: Callable[..., np.ndarray], *arrays: Any, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval of any statistic of per-sample arrays.

    ``statistic(*resampled)`` receives each array resampled to shape (B, n) — the same rows for every array — and
    returns B values (reduce along the last axis). ``(nan, nan)`` when ``n_boot`` is 0.
    """
    _check_bootstrap(n_boot, level)
    arrs = [_as_1d(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    if not arrs or len({a.size for a in arrs}) != 1:
        raise ValueError(f"bootstrap_ci needs one or more equally long arrays; got lengths {[a.size for a in arrs]}")
    return _percentile_interval(resampled(statistic, arrs, int(n_boot), seed), level)


# -------------------------------------------------------------------------------------------- the estimates


@dataclass
class OPEEstimate:
    """Result of :func:`estimate_policy_value`. ``value`` is always computed; act on it only when ``reliable``.

    ``ess`` / ``ess_share`` / ``pareto_k`` / ``weights`` describe the raw importance weights; the thresholds
    they were judged against are kept next to them. ``ci_low`` / ``ci_high`` are NaN when ``n_boot`` is 0.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    level: float
    n_boot: int
    n: int
    ess: float
    ess_share: float
    pareto_k: float
    reliable: bool
    reason: str | None
    min_ess_share: float
    max_pareto_k: float
    weights: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite floats (k̂ = ±inf, a missing interval) become None."""
        d = asdict(self)
        out = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in d.items() if k != "weights"}
        out["weights"] = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in self.weights.items()}
        return out


def _unreliable_reason(value: float, n: int, ess: float, k: float, min_ess_share: float,
                       max_pareto_k: float) -> str | None:
    reasons = []
    if k > max_pareto_k:
        if math.isinf(k):
            reasons.append(f"pareto k̂ could not be estimated (fewer than 5 distinct weights in the tail of n={n}; "
                           f"PSIS needs n ≥ 21), so the importance weights cannot be shown to have a light tail")
        else:
            reasons.append(f"pareto k̂ = {k:.2f} > {max_pareto_k:g}: importance weights have a heavy tail")
    if ess < min_ess_share * n:
        reasons.append(f"ESS {ess:.1f} is {100 * ess / n:.1f}% of n={n} < {100 * min_ess_share:g}%")
    if not math.isfinite(value):
        reasons.append(f"the estimate is not finite ({value}): an importance weight overflows")
    return "; ".join(reasons) or None


def _check_thresholds(min_ess_share: float, max_pareto_k: float) -> None:
    if not 0.0 <= min_ess_share <= 1.0:
        raise ValueError(f"min_ess_share must be in [0, 1]; got {min_ess_share}")
    if math.isnan(max_pareto_k):
        raise ValueError("max_pareto_k must be a number (inf disables the check)")


def estimate_policy_value(logp_target: Any, logp_behavior: Any, rewards: Any, q_logged: Any = None,
                          v_target: Any = None, *, estimator: str = "sndr", clip: float = 100.0, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0, min_ess_share: float = 0.1,
                          max_pareto_k: float = 0.7) -> OPEEstimate:
    """Estimate the target policy's expected reward from logged samples, with a bootstrap interval and a verdict on
    whether the importance weights allow an estimate at all (see the module docstring).

    ``reliable`` is False, with a ``reason``, when k̂ > ``max_pareto_k``, ESS < ``min_ess_share``·n, or the value
    overflows. ``clip`` only affects ``clipped_is``.
    """
    log_w = log_importance_weights(logp_target, logp_behavior)
    r, q, v = _check_rest(log_w.size, rewards, q_logged, v_target)
    _check_estimator(estimator, q, clip)
    _check_bootstrap(n_boot, level)
    _check_thresholds(min_ess_share, max_pareto_k)

    n = int(log_w.size)
    log_clip = math.log(clip)
    kernel = _kernel(estimator, log_clip)
    value = float(kernel(log_w, r, q, v))
    ci_low, ci_high = _percentile_interval(resampled(kernel, (log_w, r, q, v), int(n_boot), seed), level)
    ess, k = effective_sample_size(log_w), pareto_k(log_w)
    reason = _unreliable_reason(value, n, ess, k, min_ess_share, max_pareto_k)
    return OPEEstimate(
        estimator=estimator, value=value, ci_low=ci_low, ci_high=ci_high, level=float(level), n_boot=int(n_boot),
        n=n, ess=ess, ess_share=ess / n, pareto_k=k,
        reliable=reason is None, reason=reason,
        min_ess_share=float(min_ess_share), max_pareto_k=float(max_pareto_k),
        weights=_weights_summary(log_w, log_clip),
    )


@dataclass
class UpliftEstimate:
    """Target value minus behaviour value (the plain mean of the logged rewards, or the baseline policy's SNIS
    estimate when :func:`uplift` got ``baseline_log_w``), with a paired bootstrap interval.

    ``target`` is the full :class:`OPEEstimate`; the uplift is only as reliable as it is.
    """

    value: float
    ci_low: float
    ci_high: float
    level: float
    n_boot: int
    behavior_value: float
    target: OPEEstimate

    @property
    def reliable(self) -> bool:
        return self.target.reliable

    @property
    def reason(self) -> str | None:
        return self.target.reason

    def to_dict(self) -> dict[str, Any]:
        return {"value": finite_or_none(self.value), "ci_low": finite_or_none(self.ci_low),
                "ci_high": finite_or_none(self.ci_high), "level": self.level, "n_boot": self.n_boot,
                "behavior_value": finite_or_none(self.behavior_value), "reliable": self.reliable,
                "reason": self.reason, "target": self.target.to_dict()}


def uplift(logp_target: Any, logp_behavior: Any, rewards: Any, q_logged: Any = None, v_target: Any = None, *,
           estimator: str = "sndr", clip: float = 100.0, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
           min_ess_share: float = 0.1, max_pareto_k: float = 0.7, baseline_log_w: Any = None) -> UpliftEstimate:
    """Estimated gain of the target over the behaviour policy, V̂(target) − mean(rewards).

    With ``baseline_log_w`` (log π_baseline − log q per row, e.g. production's weights against a mixed log) the
    behaviour value is instead the baseline's SNIS estimate on the same rows: Σ w_b·r / Σ w_b.

    The interval is a *paired* bootstrap: each resample draws one set of rows for both terms, so the (strong)
    positive correlation between them narrows the interval of the difference, as it should. The target's own
    estimate, diagnostics and refusal come from :func:`estimate_policy_value` with the same arguments (and the same
    resampled rows).
    """
    target = estimate_policy_value(logp_target, logp_behavior, rewards, q_logged, v_target, estimator=estimator,
                                   clip=clip, n_boot=n_boot, level=level, seed=seed, min_ess_share=min_ess_share,
                                   max_pareto_k=max_pareto_k)
    log_w = log_importance_weights(logp_target, logp_behavior)
    r, q, v = _check_rest(log_w.size, rewards, q_logged, v_target)
    kernel = _kernel(estimator, math.log(clip))

    if baseline_log_w is None:
        bw = None
        behavior_value = float(r.mean())
    else:
        bw = _as_1d(baseline_log_w, "baseline_log_w")
        if bw.size != log_w.size:
            raise ValueError(f"baseline_log_w has {bw.size} values for {log_w.size} logged samples")
        behavior_value = float(_self_normalized_mean(bw, r))

    def difference(lw: np.ndarray, rr: np.ndarray, qq: Any, vv: Any, bb: Any) -> np.ndarray:
        base = rr.mean(axis=-1) if bb is None else _self_normalized_mean(bb, rr)
        return kernel(lw, rr, qq, vv) - base

    ci_low, ci_high = _percentile_interval(resampled(difference, (log_w, r, q, v, bw), int(n_boot), seed), level)
    return UpliftEstimate(value=target.value - behavior_value, ci_low=ci_low, ci_high=ci_high, level=float(level),
                          n_boot=int(n_boot), behavior_value=behavior_value, target=target)
