"""Calibration of reward-model preference probabilities, and how they relate to human agreement.

All inputs are in the *oriented* form of :mod:`rlhf_assets.reward.metrics`: ``margin`` is r_A − r_B for a pair shown
as (A, B), the raw probability is σ(margin) = P(A ≻ B), and ``y`` is 1 when A was preferred, 0 when B was (soft
targets in [0, 1] are accepted). Callers make that form with :func:`rlhf_assets.reward.metrics.oriented`.

- :class:`PlattCalibrator` — p = σ(a·m + b), fitted by (weighted, essentially unregularised) maximum likelihood.
- :class:`IsotonicCalibrator` — a monotone step-linear map of the margin (scikit-learn's ``IsotonicRegression``);
  stored as its breakpoints and evaluated with ``np.interp``, so it serialises to JSON (no pickle).
- :func:`fit_and_select` — choose between them by K-fold cross-validated log-loss on the validation split
  (:func:`cross_validated_log_loss`; the test split is never consulted), fit the choice on the whole validation
  split, report metrics before / after on the test split (:class:`CalibrationReport`).
- :func:`metric_intervals` — seeded bootstrap intervals of accuracy and (bias-corrected) ECE, for the gates.
- :func:`human_correlation` — Spearman / Pearson between calibrated P(A ≻ B) and the human share preferring A,
  with seeded percentile-bootstrap intervals.
- :func:`slice_accuracy`, :func:`agreement_level`, :func:`length_bucket` — accuracy per slice.
- :func:`reliability_diagram_png` — reliability curves before / after, as PNG bytes for materialization metadata.

No Dagster here; the ``rm_calibration`` asset calls these functions.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from rlhf_assets.evaluation.evidence import bias_corrected_ci, bootstrap_ci
from rlhf_assets.reward.metrics import (
    accuracy,
    expected_calibration_error,
    margin_probability,
    pairwise_report,
    reliability_bins,
)

__all__ = [
    "AGREEMENT_LEVELS",
    "CalibrationReport",
    "Calibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "agreement_level",
    "calibrator_from_dict",
    "cross_validated_log_loss",
    "fit_and_select",
    "human_correlation",
    "length_bucket",
    "metric_intervals",
    "reliability_diagram_png",
    "select_method",
    "slice_accuracy",
]

N_BINS = 15
N_FOLDS = 5
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------- validation


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {arr.shape}")
    return arr


def _check_margin(margin: Any, name: str = "margin", allow_empty: bool = False) -> np.ndarray:
    m = _as_1d(margin, name)
    if m.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: calibration needs at least one scored pair")
    n_nan = int(np.isnan(m).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN value(s) of {m.size}; score those pairs or drop them first")
    return m


def _check_fit_inputs(margin: Any, y: Any, sample_weight: Any, name: str = "margin"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = _check_margin(margin, name)
    n_inf = int(np.isinf(m).sum())
    if n_inf:
        raise ValueError(f"{name} contains {n_inf} infinite value(s) of {m.size}; a calibrator needs finite margins")
    y = _as_1d(y, "y")
    if y.size != m.size:
        raise ValueError(f"{name} and y differ in length: {m.size} vs {y.size}")
    if not np.all(np.isfinite(y)) or y.min() < 0.0 or y.max() > 1.0:
        raise ValueError("y must hold finite labels in [0, 1] (1 = A preferred, 0 = B preferred, soft allowed)")
    if sample_weight is None:
        w = np.ones_like(m)
    else:
        w = _as_1d(sample_weight, "sample_weight")
        if w.size != m.size:
            raise ValueError(f"sample_weight and {name} differ in length: {w.size} vs {m.size}")
        if not np.all(np.isfinite(w)) or w.min() < 0.0:
            raise ValueError("sample_weight must be finite and non-negative")
        if w.sum() <= 0.0:
            raise ValueError("sample_weight sums to zero: nothing to fit")
    used = y[w > 0]
    if used.min() == used.max():
        raise ValueError(f"calibration needs both outcomes: every (positively weighted) label is y={used[0]:g} "
                         f"across {used.size} pair(s); orient the pairs with metrics.oriented first")
    return m, y, w


def _json_float(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _json_safe(obj: Any) -> Any:
    """Recursively turn numpy scalars into Python ones and non-finite floats into None."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _json_float(obj)
    return obj


# -------------------------------------------------------------------------------------------------- calibrators


class PlattCalibrator:
    """Platt scaling on the score margin: p = σ(slope · margin + intercept).

    Fitted by weighted maximum likelihood (L-BFGS on the log-loss, soft labels allowed). ``l2`` is a tiny ridge on
    the slope of the *standardised* margin; it only matters when the validation split is perfectly separable,
    where the unpenalised slope would run off to infinity.
    """

    method = "platt"

    def __init__(self, l2: float = 1e-6):
        if not (l2 >= 0.0 and math.isfinite(l2)):
            raise ValueError(f"l2 must be a finite non-negative number; got {l2!r}")
        self.l2 = float(l2)
        self.slope_: float | None = None
        self.intercept_: float | None = None
        self.n_fit_: int | None = None

    def fit(self, margin: Any, y: Any, sample_weight: Any = None) -> PlattCalibrator:
        m, y, w = _check_fit_inputs(margin, y, sample_weight)
        w = w / w.sum()
        # Standardise for conditioning; map the coefficients back afterwards.
        mu = float(np.sum(w * m))
        sd = float(np.sqrt(np.sum(w * (m - mu) ** 2)))
        sd = sd if sd > 0.0 else 1.0
        z = (m - mu) / sd
        l2 = self.l2

        def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a, b = theta
            s = a * z + b
            # y·softplus(−s) + (1 − y)·softplus(s), stably
            loss = float(np.sum(w * (np.logaddexp(0.0, s) - y * s))) + 0.5 * l2 * a * a
            r = w * (expit(s) - y)
            return loss, np.array([float(np.sum(r * z)) + l2 * a, float(np.sum(r))])

        p0 = float(np.clip(np.sum(w * y), 1e-6, 1 - 1e-6))
        res = minimize(loss_grad, np.array([1.0, math.log(p0 / (1 - p0))]), jac=True, method="L-BFGS-B",
                       options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 1000})
        a, b = (float(v) for v in res.x)
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError("Platt fit diverged (non-finite coefficients); is the validation split separable?")
        self.slope_ = a / sd
        self.intercept_ = b - a * mu / sd
        self.n_fit_ = int(m.size)
        return self

    def _check_fitted(self) -> None:
        if self.slope_ is None or self.intercept_ is None:
            raise ValueError("PlattCalibrator is not fitted: call fit(margin, y) or build it with from_dict")

    def predict(self, margin: Any) -> np.ndarray:
        """Calibrated P(A ≻ B) for each margin (an empty input gives an empty output)."""
        self._check_fitted()
        m = _check_margin(margin, allow_empty=True)
        return expit(self.slope_ * m + self.intercept_)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"method": self.method, "version": FORMAT_VERSION, "slope": float(self.slope_),
                "intercept": float(self.intercept_), "l2": self.l2, "n_fit": self.n_fit_}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlattCalibrator:
        _check_method(d, cls.method)
        try:
            slope, intercept = float(d["slope"]), float(d["intercept"])
        except KeyError as exc:
            raise ValueError(f"platt calibrator dict lacks {exc.args[0]!r}") from None
        if not (math.isfinite(slope) and math.isfinite(intercept)):
            raise ValueError("platt calibrator dict has non-finite slope/intercept")
        cal = cls(l2=float(d.get("l2", 1e-6)))
        cal.slope_, cal.intercept_ = slope, intercept
        cal.n_fit_ = None if d.get("n_fit") is None else int(d["n_fit"])
        return cal

    def __repr__(self) -> str:
        if self.slope_ is None:
            return "PlattCalibrator(unfitted)"
        return f"PlattCalibrator(slope={self.slope_:.4g}, intercept={self.intercept_:.4g})"


class IsotonicCalibrator:
    """Isotonic (monotone increasing) regression of the label on the margin, clipped outside the fitted range.

    Fitted with scikit-learn's ``IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0, y_max=1)``;
    only its breakpoints (``X_thresholds_``, ``y_thresholds_``) are kept, and prediction is ``np.interp`` on them,
    which equals scikit-learn's ``predict`` (np.interp holds the end values outside the range, i.e. clips).
    Note that isotonic outputs can be exactly 0 or 1, which log-loss punishes hard on a new split.
    """

    method = "isotonic"

    def __init__(self) -> None:
        self.x_thresholds_: np.ndarray | None = None
        self.y_thresholds_: np.ndarray | None = None
        self.n_fit_: int | None = None

    def fit(self, margin: Any, y: Any, sample_weight: Any = None) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        m, y, w = _check_fit_inputs(margin, y, sample_weight)
        iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(m, y, sample_weight=w)
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        self.n_fit_ = int(m.size)
        return self

    def _check_fitted(self) -> None:
        if self.x_thresholds_ is None or self.y_thresholds_ is None:
            raise ValueError("IsotonicCalibrator is not fitted: call fit(margin, y) or build it with from_dict")

    def predict(self, margin: Any) -> np.ndarray:
        """Calibrated P(A ≻ B) for each margin (an empty input gives an empty output)."""
        self._check_fitted()
        m = _check_margin(margin, allow_empty=True)
        return np.interp(m, self.x_thresholds_, self.y_thresholds_)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"method": self.method, "version": FORMAT_VERSION,
                "x_thresholds": [float(v) for v in self.x_thresholds_],
                "y_thresholds": [float(v) for v in self.y_thresholds_], "n_fit": self.n_fit_}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IsotonicCalibrator:
        _check_method(d, cls.method)
        try:
            x = np.asarray(d["x_thresholds"], dtype=np.float64)
            yv = np.asarray(d["y_thresholds"], dtype=np.float64)
        except KeyError as exc:
            raise ValueError(f"isotonic calibrator dict lacks {exc.args[0]!r}") from None
        if x.ndim != 1 or x.shape != yv.shape or x.size == 0:
            raise ValueError("isotonic calibrator dict needs equally long, non-empty x_thresholds and y_thresholds")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(yv))):
            raise ValueError("isotonic calibrator dict has non-finite thresholds")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(yv) < 0) or yv.min() < 0 or yv.max() > 1:
            raise ValueError("isotonic calibrator dict: x_thresholds must increase strictly and y_thresholds "
                             "must be non-decreasing in [0, 1]")
        cal = cls()
        cal.x_thresholds_, cal.y_thresholds_ = x, yv
        cal.n_fit_ = None if d.get("n_fit") is None else int(d["n_fit"])
        return cal

    def __repr__(self) -> str:
        if self.x_thresholds_ is None:
            return "IsotonicCalibrator(unfitted)"
        return f"IsotonicCalibrator({self.x_thresholds_.size} breakpoints)"


Calibrator = PlattCalibrator | IsotonicCalibrator
_CALIBRATORS: dict[str, type] = {"platt": PlattCalibrator, "isotonic": IsotonicCalibrator}


def _check_method(d: Mapping[str, Any], expected: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"calibrator must be restored from a dict; got {type(d).__name__}")
    if d.get("method") != expected:
        raise ValueError(f"expected a {expected!r} calibrator dict; got method={d.get('method')!r}")
    version = d.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported {expected} calibrator format version {version!r} (this code reads "
                         f"{FORMAT_VERSION})")


def calibrator_from_dict(d: Mapping[str, Any]) -> Calibrator:
    """Rebuild a calibrator from its ``to_dict()`` form, dispatching on ``d["method"]``."""
    if not isinstance(d, Mapping):
        raise ValueError(f"calibrator must be restored from a dict; got {type(d).__name__}")
    method = d.get("method")
    if method not in _CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {sorted(_CALIBRATORS)}")
    return _CALIBRATORS[method].from_dict(d)


# ------------------------------------------------------------------------------------------- fit and select


def _fold_ids(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Seeded, stratified fold of every row: rows are shuffled within each outcome (y < ½, y = ½, y > ½) and dealt
    round-robin, so every fold's training part keeps both outcomes whenever each outcome has ≥ 2 rows."""
    rng = np.random.default_rng(seed)
    folds = np.empty(y.size, dtype=np.int64)
    dealt = 0
    for outcome in (-1.0, 0.0, 1.0):
        idx = np.flatnonzero(np.sign(y - 0.5) == outcome)
        folds[rng.permutation(idx)] = (dealt + np.arange(idx.size)) % n_folds
        dealt += idx.size
    return folds


def _weighted_log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float = 1e-12) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(np.sum(w * -(y * np.log(p) + (1 - y) * np.log(1 - p))) / np.sum(w))


def cross_validated_log_loss(margin: Any, y: Any, sample_weight: Any = None, n_folds: int = N_FOLDS,
                             seed: int = 0) -> dict[str, float]:
    """Mean held-out-fold log-loss of every candidate calibrator under seeded, stratified K-fold CV of one split.

    Each candidate is fitted on K − 1 folds and scored (weighted, as fitted) on the fold left out; the fold losses
    are averaged. A fold is skipped for every candidate alike when its training part holds one outcome only (an
    outcome with a single pair in the split) or its held-out part has no weight; NaN when no fold is left. Keys
    in candidate order (platt, isotonic).
    """
    m, yy, w = _check_fit_inputs(margin, y, sample_weight)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    if m.size < n_folds:
        raise ValueError(f"{n_folds}-fold cross-validation needs at least {n_folds} pairs; got {m.size}")
    folds = _fold_ids(yy, int(n_folds), seed)
    losses: dict[str, list[float]] = {name: [] for name in _CALIBRATORS}
    for k in range(int(n_folds)):
        fit, held = folds != k, folds == k
        used = yy[fit][w[fit] > 0]
        if w[held].sum() <= 0.0 or used.size == 0 or used.min() == used.max():
            continue
        for name, cls in _CALIBRATORS.items():
            cal = cls().fit(m[fit], yy[fit], w[fit])
            losses[name].append(_weighted_log_loss(cal.predict(m[held]), yy[held], w[held]))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in losses.items()}


@dataclass
class CalibrationReport:
    """Result of :func:`fit_and_select`: the chosen calibrator and test-split metrics before / after it.

    ``before`` / ``after`` are :func:`metrics.pairwise_report` dicts (n, accuracy, auc, ece, log_loss, brier) of
    σ(margin) and of the calibrated probability on the test split; ``cv_log_loss`` holds every candidate's mean
    held-out-fold log-loss on the validation split (what chose ``method``).
    """

    method: str
    calibrator: Calibrator
    before: dict[str, float]
    after: dict[str, float]
    cv_log_loss: dict[str, float]
    n_val: int
    n_test: int
    n_folds: int = N_FOLDS
    fold_seed: int = 0
    n_bins: int = N_BINS

    @property
    def ece_before(self) -> float:
        return self.before["ece"]

    @property
    def ece_after(self) -> float:
        return self.after["ece"]

    def predict(self, margin: Any) -> np.ndarray:
        return self.calibrator.predict(margin)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN / inf → None), including the chosen calibrator's ``to_dict()``."""
        return _json_safe({
            "method": self.method, "n_val": self.n_val, "n_test": self.n_test, "n_bins": self.n_bins,
            "n_folds": self.n_folds, "fold_seed": self.fold_seed, "before": self.before, "after": self.after,
            "cv_log_loss": self.cv_log_loss, "calibrator": self.calibrator.to_dict(),
        })


def select_method(val_margin: Any, val_y: Any, val_weight: Any = None, n_folds: int = N_FOLDS,
                  seed: int = 0) -> tuple[str, dict[str, float]]:
    """The calibration method with the lower cross-validated log-loss on the validation split (ties → Platt; so
    is a split too small for any fold to be scored), and every candidate's CV log-loss."""
    cv = cross_validated_log_loss(val_margin, val_y, val_weight, n_folds=n_folds, seed=seed)
    if not all(math.isfinite(v) for v in cv.values()):
        return PlattCalibrator.method, cv
    return min(cv, key=cv.__getitem__), cv  # min keeps the first of equals: platt


def fit_and_select(val_margin: Any, val_y: Any, test_margin: Any, test_y: Any, val_weight: Any = None, *,
                   n_folds: int = N_FOLDS, seed: int = 0) -> CalibrationReport:
    """Choose the method by K-fold CV on the validation split, fit it on the whole validation split, and measure
    it on the test split, before (σ(margin)) and after calibration.

    The test split is only measured, never consulted for the choice, so the "after" numbers are an honest
    held-out estimate that a gate may act on.
    """
    vm, vy, vw = _check_fit_inputs(val_margin, val_y, val_weight, name="val_margin")
    tm = _check_margin(test_margin, "test_margin")
    ty = _as_1d(test_y, "test_y")
    if ty.size != tm.size:
        raise ValueError(f"test_margin and test_y differ in length: {tm.size} vs {ty.size}")
    if not np.all(np.isfinite(ty)) or ty.min() < 0.0 or ty.max() > 1.0:
        raise ValueError("test_y must hold finite labels in [0, 1]")

    method, cv = select_method(vm, vy, vw, n_folds=n_folds, seed=seed)
    calibrator = _CALIBRATORS[method]().fit(vm, vy, vw)
    return CalibrationReport(
        method=method, calibrator=calibrator,
        before=pairwise_report(margin_probability(tm), ty, N_BINS),
        after=pairwise_report(calibrator.predict(tm), ty, N_BINS),
        cv_log_loss=cv, n_val=int(vm.size), n_test=int(tm.size), n_folds=int(n_folds), fold_seed=int(seed),
        n_bins=N_BINS,
    )


def metric_intervals(p: Any, y: Any, *, n_boot: int, seed: int, confidence: float,
                     n_bins: int = N_BINS) -> dict[str, Any]:
    """Accuracy and ``n_bins``-bin ECE of the probabilities ``p`` against ``y``, with seeded bootstrap intervals
    (pairs resampled) for the gates.

    Keys: ``accuracy`` with ``accuracy_ci`` (percentile bootstrap: accuracy is a mean, unbiased); ``ece`` (the plug-in
    estimate), ``ece_debiased`` and ``ece_ci`` (bias-corrected bootstrap, :func:`evidence.bias_corrected_ci`: the
    plug-in ECE is biased upward by noise alone, by about as much as a 0.05 threshold at a few hundred pairs).
    Intervals are ``[low, high]``, ``[None, None]`` when not measurable.
    """
    pp, yy = _as_1d(p, "p"), _as_1d(y, "y")
    if pp.size != yy.size:
        raise ValueError(f"p and y differ in length: {pp.size} vs {yy.size}")
    opts = {"n_boot": int(n_boot), "seed": int(seed), "confidence": float(confidence)}
    ece = lambda a, b: expected_calibration_error(a, b, n_bins)  # noqa: E731
    acc_lo, acc_hi = bootstrap_ci(accuracy, [pp, yy], **opts)
    debiased, ece_lo, ece_hi = bias_corrected_ci(ece, [pp, yy], floor=0.0, **opts)
    return {"accuracy": _json_float(accuracy(pp, yy)) if pp.size else None,
            "accuracy_ci": _pair(acc_lo, acc_hi),
            "ece": _json_float(ece(pp, yy)) if pp.size else None,
            "ece_debiased": _json_float(debiased),
            "ece_ci": _pair(ece_lo, ece_hi)}


def _pair(lo: float, hi: float) -> list[float | None]:
    return [float(lo), float(hi)] if math.isfinite(lo) and math.isfinite(hi) else [None, None]


# ------------------------------------------------------------------------------------------ human agreement


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denom
    return np.clip(np.where(denom > 0, r, np.nan), -1.0, 1.0)


def human_correlation(p_calibrated: Any, human_share_a: Any, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Rank (Spearman) and linear (Pearson) correlation of calibrated P(A ≻ B) with the human share preferring A.

    Each estimate comes with a seeded percentile-bootstrap interval (pairs resampled with replacement, vectorised in
    chunks). Undefined cases (fewer than 3 pairs, a constant input) give NaN estimates and a ``reason`` instead of
    raising. Keys: n, n_boot, confidence, spearman, spearman_ci_low, spearman_ci_high, pearson, pearson_ci_low,
    pearson_ci_high, reason.
    """
    from scipy.stats import pearsonr, rankdata, spearmanr

    x = _as_1d(p_calibrated, "p_calibrated")
    h = _as_1d(human_share_a, "human_share_a")
    if x.size != h.size:
        raise ValueError(f"p_calibrated and human_share_a differ in length: {x.size} vs {h.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(h))):
        raise ValueError("p_calibrated and human_share_a must be finite (drop pairs without human labels first)")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0; got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "n_boot": int(n_boot), "confidence": float(confidence)}
    nan = float("nan")
    for key in ("spearman", "pearson"):
        out.update({key: nan, f"{key}_ci_low": nan, f"{key}_ci_high": nan})

    reason = None
    if n < 3:
        reason = f"need at least 3 pairs for a correlation; got {n}"
    elif np.ptp(x) == 0:
        reason = f"p_calibrated is constant ({x[0]:g}): correlation undefined"
    elif np.ptp(h) == 0:
        reason = f"human_share_a is constant ({h[0]:g}): correlation undefined"
    out["reason"] = reason
    if reason is not None:
        return out

    out["spearman"] = float(spearmanr(x, h).statistic)
    out["pearson"] = float(pearsonr(x, h).statistic)
    if n_boot == 0:
        return out

    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // n))  # bound memory to a few arrays of ~2e6 floats
    sp, pe = [], []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        xb, hb = x[idx], h[idx]
        pe.append(_rowwise_pearson(xb, hb))
        sp.append(_rowwise_pearson(rankdata(xb, axis=1), rankdata(hb, axis=1)))
    alpha = 100.0 * (1.0 - confidence) / 2.0
    for key, boots in (("spearman", np.concatenate(sp)), ("pearson", np.concatenate(pe))):
        if np.isnan(boots).all():  # every resample constant: cannot happen unless n is tiny
            continue
        lo, hi = np.nanpercentile(boots, [alpha, 100.0 - alpha])
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    return out


# ------------------------------------------------------------------------------------------------- slices

AGREEMENT_LEVELS = ("unanimous", "strong", "split")
_AGREEMENT_TOL = 1e-9


def agreement_level(share_a: Any) -> np.ndarray:
    """Label each pair by how much its annotators agreed, from the share preferring A.

    ``unanimous`` when the share is 0 or 1, ``strong`` when ≥ 0.8 or ≤ 0.2, else ``split``.
    """
    s = _as_1d(share_a, "share_a")
    if not np.all(np.isfinite(s)) or (s.size and (s.min() < 0.0 or s.max() > 1.0)):
        raise ValueError("share_a must hold finite shares in [0, 1]")
    extreme = np.maximum(s, 1.0 - s)
    return np.where(extreme >= 1.0 - _AGREEMENT_TOL, "unanimous",
                    np.where(extreme >= 0.8 - _AGREEMENT_TOL, "strong", "split")).astype(str)


def length_bucket(n_chars: Any, edges: tuple[int, ...] = (200, 500, 1000)) -> np.ndarray:
    """Bucket labels for response lengths with half-open intervals: ``<200``, ``200-500`` (200 ≤ n < 500),
    ``500-1000``, ``>=1000`` for the default edges."""
    n = _as_1d(n_chars, "n_chars")
    e = [float(v) for v in edges]
    if not e or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be a non-empty, strictly increasing sequence; got {tuple(edges)}")
    if np.isnan(n).any():
        raise ValueError("n_chars contains NaN")
    fmt = [f"{v:g}" for v in e]
    labels = np.array([f"<{fmt[0]}"] + [f"{a}-{b}" for a, b in zip(fmt, fmt[1:])] + [f">={fmt[-1]}"])
    return labels[np.searchsorted(np.asarray(e), n, side="right")]


def _slice_order(value: str) -> tuple:
    if value in AGREEMENT_LEVELS:
        return (0, AGREEMENT_LEVELS.index(value), 0.0, value)
    match = re.match(r"^(<|>=)?(-?\d+(?:\.\d+)?)", value)
    if match:
        lower = float("-inf") if match.group(1) == "<" else float(match.group(2))
        return (1, 0, lower, value)
    return (2, 0, 0.0, value)


def slice_accuracy(p: Any, y: Any, slices: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Accuracy (metrics.accuracy: ties count half) and n for every value of every slicing.

    ``slices`` maps a slicing name (e.g. ``"agreement_level"``) to one label per pair. Rows come out per slicing
    in a natural order (agreement levels unanimous → split, length buckets by lower edge, otherwise sorted), each
    ``{"slicing", "value", "n", "share", "accuracy"}``; the n of one slicing sum to len(p).
    """
    p = _as_1d(p, "p")
    y = _as_1d(y, "y")
    if p.size != y.size:
        raise ValueError(f"p and y differ in length: {p.size} vs {y.size}")
    if np.isnan(p).any() or np.isnan(y).any():
        raise ValueError("p and y must not contain NaN")
    rows: list[dict[str, Any]] = []
    for name, labels in slices.items():
        labels = np.asarray(labels).astype(str).reshape(-1)
        if labels.size != p.size:
            raise ValueError(f"slice {name!r} has {labels.size} labels for {p.size} pairs")
        for value in sorted(np.unique(labels).tolist(), key=_slice_order):
            mask = labels == value
            k = int(mask.sum())
            rows.append({"slicing": str(name), "value": value, "n": k, "share": k / p.size,
                         "accuracy": accuracy(p[mask], y[mask])})
    return rows


# ---------------------------------------------------------------------------------------- reliability plot


def reliability_diagram_png(p_before: Any, p_after: Any, y: Any, n_bins: int = N_BINS, dpi: int = 100) -> bytes:
    """PNG bytes of a reliability diagram: observed frequency vs mean prediction per equal-width bin, before and
    after calibration, against the diagonal; a histogram of predictions beneath; ECEs in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pb, pa, yy = _as_1d(p_before, "p_before"), _as_1d(p_after, "p_after"), _as_1d(y, "y")
    if not (pb.size == pa.size == yy.size):
        raise ValueError(f"p_before, p_after and y differ in length: {pb.size}, {pa.size}, {yy.size}")
    if pb.size == 0:
        raise ValueError("nothing to plot: no predictions")
    for name, arr in (("p_before", pb), ("p_after", pa)):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"{name} must hold probabilities in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")

    ece_b = expected_calibration_error(pb, yy, n_bins)
    ece_a = expected_calibration_error(pa, yy, n_bins)
    fig = Figure(figsize=(5.5, 6.0), dpi=dpi)  # no pyplot: nothing global to close, safe in threads
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    for label, arr, color, marker in (("before (σ(margin))", pb, "tab:red", "o"),
                                      ("after", pa, "tab:blue", "s")):
        bins = reliability_bins(arr, yy, n_bins)
        keep = bins["count"] > 0
        ax.plot(bins["mean_predicted"][keep], bins["observed"][keep], marker=marker, color=color,
                linewidth=1.5, markersize=4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed P(A ≻ B)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    ax.set_title(f"Reliability (n={pb.size}): ECE {ece_b:.3f} → {ece_a:.3f}", fontsize=10)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    hist.hist(pb, bins=edges, color="tab:red", alpha=0.45, label="before")
    hist.hist(pa, bins=edges, color="tab:blue", alpha=0.45, label="after")
    hist.set_xlabel("predicted P(A ≻ B)")
    hist.set_ylabel("pairs")
    hist.legend(loc="upper left", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()
