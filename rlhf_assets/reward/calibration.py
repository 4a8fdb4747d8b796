"""Calibration of reward-model preference probabilities: the calibrators, and the cross-validated choice of one.

All inputs are in the *oriented* form of :mod:`rlhf_assets.reward.metrics`: ``margin`` is r_A − r_B for a pair shown
as (A, B), the raw probability is σ(margin) = P(A ≻ B), and ``y`` is 1 when A was preferred, 0 when B was (soft
targets in [0, 1] are accepted). Callers make that form with :func:`rlhf_assets.reward.metrics.oriented`.

- :class:`PlattCalibrator` — p = σ(a·m + b), fitted by (weighted, essentially unregularised) maximum likelihood.
- :class:`IsotonicCalibrator` — a monotone step-linear map of the margin (scikit-learn's ``IsotonicRegression``);
  stored as its breakpoints and evaluated with ``np.interp``, so it serialises to JSON (no pickle).
- :func:`fit_and_select` — choose between them by K-fold cross-validated log-loss on the validation split
  (:func:`cross_validated_log_loss`; the test split is never consulted), fit the choice on the whole validation
  split, report metrics before / after on the test split (:class:`CalibrationReport`).

The diagnostics reported beside them (ECE intervals, human correlation, slice accuracy, the reliability diagram)
are in :mod:`rlhf_assets.reward.calibration_diagnostics`. No Dagster here; the ``rm_calibration`` asset calls these
functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from rlhf_assets.arrays import float_vector
from rlhf_assets.jsonsafe import json_plain
from rlhf_assets.reward.metrics import margin_probability, pairwise_report

__all__ = [
    "CalibrationReport",
    "Calibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "calibrator_from_dict",
    "cross_validated_log_loss",
    "fit_and_select",
    "select_method",
]

N_BINS = 15
N_FOLDS = 5
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------- validation


def _check_margin(margin: Any, name: str = "margin", allow_empty: bool = False) -> np.ndarray:
    m = float_vector(margin, name)
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
    y = float_vector(y, "y")
    if y.size != m.size:
        raise ValueError(f"{name} and y differ in length: {m.size} vs {y.size}")
    if not np.all(np.isfinite(y)) or y.min() < 0.0 or y.max() > 1.0:
        raise ValueError("y must hold finite labels in [0, 1] (1 = A preferred, 0 = B preferred, soft allowed)")
    if sample_weight is None:
        w = np.ones_like(m)
    else:
        w = float_vector(sample_weight, "sample_weight")
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


# -------------------------------------------------------------------------------------------------- calibrators


class _FittedMap:
    """What both calibrators share around their own fit and map: the not-fitted check, prediction on validated
    margins, and the frame of the dict form (``method``, ``version``, the fitted parameters, ``n_fit``)."""

    method: str
    _fitted: tuple[str, ...]  # the attributes fit() sets: None until then

    def _is_fitted(self) -> bool:
        return all(getattr(self, name) is not None for name in self._fitted)

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(margin, y) or build it with from_dict")

    def predict(self, margin: Any) -> np.ndarray:
        """Calibrated P(A ≻ B) for each margin (an empty input gives an empty output)."""
        self._check_fitted()
        return self._map(_check_margin(margin, allow_empty=True))

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"method": self.method, "version": FORMAT_VERSION, **self._params(), "n_fit": self.n_fit_}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        _check_method(d, cls.method)
        try:
            cal = cls._from_params(d)
        except KeyError as exc:
            raise ValueError(f"{cls.method} calibrator dict lacks {exc.args[0]!r}") from None
        cal.n_fit_ = None if d.get("n_fit") is None else int(d["n_fit"])
        return cal

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe() if self._is_fitted() else 'unfitted'})"


class PlattCalibrator(_FittedMap):
    """Platt scaling on the score margin: p = σ(slope · margin + intercept).

    Fitted by weighted maximum likelihood (L-BFGS on the log-loss, soft labels allowed). ``l2`` is a tiny ridge on
    the slope of the *standardised* margin; it only matters when the validation split is perfectly separable,
    where the unpenalised slope would run off to infinity.
    """

    method = "platt"
    _fitted = ("slope_", "intercept_")

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

    def _map(self, m: np.ndarray) -> np.ndarray:
        return expit(self.slope_ * m + self.intercept_)

    def _params(self) -> dict[str, Any]:
        return {"slope": float(self.slope_), "intercept": float(self.intercept_), "l2": self.l2}

    @classmethod
    def _from_params(cls, d: Mapping[str, Any]) -> PlattCalibrator:
        slope, intercept = float(d["slope"]), float(d["intercept"])
        if not (math.isfinite(slope) and math.isfinite(intercept)):
            raise ValueError("platt calibrator dict has non-finite slope/intercept")
        cal = cls(l2=float(d.get("l2", 1e-6)))
        cal.slope_, cal.intercept_ = slope, intercept
        return cal

    def _describe(self) -> str:
        return f"slope={self.slope_:.4g}, intercept={self.intercept_:.4g}"


class IsotonicCalibrator(_FittedMap):
    """Isotonic (monotone increasing) regression of the label on the margin, clipped outside the fitted range.

    Fitted with scikit-learn's ``IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0, y_max=1)``;
    only its breakpoints (``X_thresholds_``, ``y_thresholds_``) are kept, and prediction is ``np.interp`` on them,
    which equals scikit-learn's ``predict`` (np.interp holds the end values outside the range, i.e. clips).
    Note that isotonic outputs can be exactly 0 or 1, which log-loss punishes hard on a new split.
    """

    method = "isotonic"
    _fitted = ("x_thresholds_", "y_thresholds_")

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

    def _map(self, m: np.ndarray) -> np.ndarray:
        return np.interp(m, self.x_thresholds_, self.y_thresholds_)

    def _params(self) -> dict[str, Any]:
        return {"x_thresholds": [float(v) for v in self.x_thresholds_],
                "y_thresholds": [float(v) for v in self.y_thresholds_]}

    @classmethod
    def _from_params(cls, d: Mapping[str, Any]) -> IsotonicCalibrator:
        x = np.asarray(d["x_thresholds"], dtype=np.float64)
        yv = np.asarray(d["y_thresholds"], dtype=np.float64)
        if x.ndim != 1 or x.shape != yv.shape or x.size == 0:
            raise ValueError("isotonic calibrator dict needs equally long, non-empty x_thresholds and y_thresholds")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(yv))):
            raise ValueError("isotonic calibrator dict has non-finite thresholds")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(yv) < 0) or yv.min() < 0 or yv.max() > 1:
            raise ValueError("isotonic calibrator dict: x_thresholds must increase strictly and y_thresholds "
                             "must be non-decreasing in [0, 1]")
        cal = cls()
        cal.x_thresholds_, cal.y_thresholds_ = x, yv
        return cal

    def _describe(self) -> str:
        return f"{self.x_thresholds_.size} breakpoints"


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
        return json_plain({
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
    ty = float_vector(test_y, "test_y")
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
