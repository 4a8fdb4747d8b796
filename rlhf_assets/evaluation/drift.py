"""Drift of the served reward model: its scores, its confidence on compared pairs and the prompts it sees.

A **reference** is stored for each release — the calibrated model's scores (and its P(a ≻ b) on compared pairs, and
the prompt embeddings) on the release's test prompts and responses, later a sample of production traffic once it
serves — and each **window** of served items (``window`` of them, default 500) is compared with it:

==========================  ========================================================================================
test                        statistic
==========================  ========================================================================================
``psi``                     population stability index of the scores on the reference's ``psi_bins`` quantile bins
``ks``                      two-sample Kolmogorov–Smirnov statistic of the scores (``scipy.stats.ks_2samp``)
``wasserstein``             Wasserstein-1 distance of the scores ÷ the reference's standard deviation (scipy)
``mean_shift``              |mean score of the window − the reference's| ÷ the reference's standard deviation: the
                            test built for a location shift (it also feeds the pooled rule below)
``expected_accuracy_drop``  fall of the label-free expected pairwise accuracy E[max(p, 1 − p)] of the calibrated
                            P(a ≻ b) over the last ``pair_window`` compared pairs (a confidence-based performance
                            estimate: a falling value means the model is less sure about what it now sees)
``classifier_auc``          domain-classifier two-sample test on the prompt embeddings: cross-validated ROC AUC of a
                            logistic regression telling reference from window (scikit-learn); 0.5 = no difference
``mmd``                     squared maximum mean discrepancy of the prompt embeddings, RBF kernel with the
                            median-heuristic bandwidth (unbiased estimate)
==========================  ========================================================================================

**Alarms act on effect sizes, not p-values**: at production volume every tiny shift is "significant". Each
statistic's threshold is calibrated once per reference (:func:`calibrate`) on an empirical null — ``null_windows``
reference-versus-reference comparisons of windows of the same size (a window drawn from the reference without
replacement against the rest of it, whole prompt groups at a time) — as mean + ``k``·sd of the null statistics
(NannyML's rule, k = 3). A window
alarms when any measured statistic is over its threshold (:func:`check`); an alarm is raised only when that happens
on ``persist_k`` of the last ``persist_n`` windows (:func:`persistent`, :class:`AlarmHistory`; 2 of 3). A test whose
inputs are missing (no embeddings, too few compared pairs) is reported as not measured and never alarms.

**The pooled location rule** (``pool_location``): the 2-of-3 vote throws evidence away — a shift of the scores
that sits just under the per-window threshold in every window never alarms. Scores of one prompt move together
(the two sides of a compared pair correlate at about 0.9 with the bundled reward model), so a window of 500 items
holds only about 265 items' worth of information on the mean, and a 0.25-sd shift is only about 3.5 standard errors
of a window-versus-reference difference. The history therefore also keeps each window's signed mean shift, and
alarms when their average over the last ``persist_n`` windows is over ``k`` standard errors of such an average
(:class:`LocationNull`: the prompt-clustered — cluster-robust — standard error of the reference's mean and of a
window's, computed once at calibration; the window term shrinks with the number of windows pooled, the reference's
does not). It needs a full ``persist_n`` windows, so it is a persistence rule too.

Calibration is separate from checking so a sensor can store the :class:`Calibration` next to the release (JSON) and
check a 500-item window in well under a second. No Dagster here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

PositiveInt = Annotated[int, Field(ge=1)]

CALIBRATION_VERSION = 2
SCORE_TESTS = ("psi", "ks", "wasserstein", "mean_shift")
PAIR_TESTS = ("expected_accuracy_drop",)
EMBEDDING_TESTS = ("classifier_auc", "mmd")
TESTS = SCORE_TESTS + PAIR_TESTS + EMBEDDING_TESTS


class DriftInputError(ValueError):
    """Inputs a drift test cannot run on (too small, mismatched, not finite); the message says what and why."""


@settings
class DriftSettings(FileConfig):
    """How windows of served scores and prompts are compared with a release's reference, and when that alarms."""

    window: Annotated[int, Field(ge=10)] = 500
    """Items (scored responses) per window; every threshold is calibrated for windows of exactly this size."""
    min_window: Annotated[int, Field(ge=10)] = 100
    """The smallest window a calibration may be made for: smaller windows are refused (too noisy to act on)."""
    pair_window: Annotated[int, Field(ge=10)] = 250
    """Compared pairs the expected-accuracy test looks at (the window's last ones); a window with fewer leaves the
    test not measured."""
    k: Annotated[float, Field(gt=0)] = 3.0
    """Each threshold is mean + k·sd of the statistic over the reference-versus-reference null windows."""
    null_windows: Annotated[int, Field(ge=10)] = 100
    """Reference-versus-reference windows that calibrate each threshold (the empirical null); the sd they give is
    within about ±7% at 100 (±10% at 50), and calibrating costs about 0.1 s per window."""
    persist_k: PositiveInt = 2
    """An alarm needs the effect on persist_k of the last persist_n windows."""
    persist_n: PositiveInt = 3
    """How many of the most recent windows the persistence rule looks at."""
    pool_location: bool = True
    """Also raise the alarm when the mean score shift averaged over the last persist_n windows is over k of its
    prompt-clustered standard errors (the pooled location rule: a small shift that persists is found in fewer
    windows than by the persist_k-of-persist_n vote)."""
    psi_bins: Annotated[int, Field(ge=2, le=100)] = 10
    """PSI bins: edges at the reference's quantiles (equal-mass bins)."""
    psi_floor: Annotated[float, Field(gt=0, lt=0.01)] = 1e-4
    """Smallest bin proportion in the PSI (an empty bin would make it infinite)."""
    classifier_folds: Annotated[int, Field(ge=2, le=20)] = 5
    """Cross-validation folds of the domain classifier (stratified, shuffled with the seed)."""
    classifier_reference_cap: Annotated[int, Field(ge=10)] = 1000
    """Reference embeddings the domain classifier sees at most (a seeded subsample): bounds its cost."""
    classifier_c: Annotated[float, Field(gt=0)] = 1.0
    """Inverse L2 regularisation of the domain classifier's logistic regression (on standardised embeddings)."""
    mmd_reference_cap: Annotated[int, Field(ge=10)] = 1000
    """Reference embeddings the MMD uses at most (a seeded subsample): its cost grows with the square."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the null windows, the reference subsamples and the classifier's folds."""

    CONFIG_LABEL = "drift"

    def __post_init__(self) -> None:
        if self.persist_k > self.persist_n:
            raise ValueError(f"DriftSettings.persist_k={self.persist_k} must be at most persist_n={self.persist_n}")
        if self.min_window > self.window:
            raise ValueError(f"DriftSettings.window={self.window} is below min_window={self.min_window}")


#: Settings that do not change a calibration (they only act on its results).
NOT_CALIBRATED = ("persist_k", "persist_n", "pool_location")


# -------------------------------------------------------------------------------------------------- containers


def _array(values: Any, name: str, ndim: int, dtype: Any) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(values, dtype=dtype))
    if arr.ndim != ndim:
        raise DriftInputError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise DriftInputError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


@dataclass(frozen=True, eq=False)
class Sample:
    """Scored items: what a reference holds and what a window holds.

    ``scores``: raw reward-model scores, one per item; ``p``: calibrated P(a ≻ b), one per compared pair (in time
    order), or None; ``embeddings``: the prompt embeddings, one row per item (aligned with ``scores``), or None;
    ``groups``: one label per item naming its prompt (items of one prompt — both sides of a compared pair, the
    candidates of a best-of-n — are alike, so a reference's null windows take or leave a prompt's items together;
    without it every item is its own group, which makes the null too narrow for such traffic)."""

    scores: np.ndarray
    p: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", _array(self.scores, "scores", 1, np.float64))
        if self.p is not None:
            p = _array(self.p, "p", 1, np.float64)
            if p.size and (p.min() < 0 or p.max() > 1):
                raise DriftInputError("p must be probabilities in [0, 1]")
            object.__setattr__(self, "p", p)
        if self.embeddings is not None:
            emb = _array(self.embeddings, "embeddings", 2, np.float32)
            if len(emb) != len(self.scores):
                raise DriftInputError(f"embeddings has {len(emb)} rows for {len(self.scores)} scores: one per item")
            object.__setattr__(self, "embeddings", emb)
        if self.groups is not None:
            labels = np.asarray(self.groups)
            if labels.shape != self.scores.shape:
                raise DriftInputError(f"groups has shape {labels.shape} for {len(self.scores)} scores: one per item")
            codes = np.unique(labels, return_inverse=True)[1].astype(np.int64) if labels.size else labels
            object.__setattr__(self, "groups", np.asarray(codes, dtype=np.int64))

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def n_pairs(self) -> int:
        return 0 if self.p is None else len(self.p)

    @cached_property
    def digest(self) -> str:
        """sha256 of the arrays (values, shapes, dtypes): what a calibration was made for."""
        h = hashlib.sha256()
        for name in ("scores", "p", "embeddings", "groups"):
            arr = getattr(self, name)
            h.update(f"{name}:{None if arr is None else (arr.shape, arr.dtype.str)};".encode())
            if arr is not None:
                h.update(arr.tobytes())
        return h.hexdigest()

    def prompt_embeddings(self) -> np.ndarray:
        """One embedding per prompt (each group's first item; every item without groups): prompt drift is about
        the prompts, and the items of one prompt would otherwise straddle the domain classifier's folds."""
        if self.groups is None:
            return self.embeddings
        return self.embeddings[np.sort(np.unique(self.groups, return_index=True)[1])]

    def size(self) -> dict[str, int]:
        return {"items": self.n, "pairs": self.n_pairs,
                "embedding_dim": 0 if self.embeddings is None else int(self.embeddings.shape[1])}

    def last(self, n: int, pairs: int) -> Sample:
        """The most recent ``n`` items and ``pairs`` compared pairs."""
        return Sample(self.scores[-n:], None if self.p is None else self.p[-pairs:],
                      None if self.embeddings is None else self.embeddings[-n:],
                      None if self.groups is None else self.groups[-n:])

    @classmethod
    def from_log(cls, frame: Any) -> Sample:
        """From serving-log rows (``rlhf_assets.serving.log.LOG_SCHEMA``, a polars frame, in time order): every
        row's ``score`` and ``embedding``; ``p`` is the ``p_a`` of each compared pair's side-a row; the groups are
        the prompts (``prompt_sha256``, else ``prompt``, else ``request_id``). Rows must have a score; embeddings are
        used when every row has one."""
        import polars as pl

        if "score" not in frame.columns:
            raise DriftInputError("no score column")
        if frame["score"].null_count():
            raise DriftInputError(f"{frame['score'].null_count()} rows have no score")
        scores = frame["score"].cast(pl.Float64).to_numpy()
        p = None
        if {"p_a", "side"} <= set(frame.columns):
            sides = frame.filter((pl.col("side") == "a") & pl.col("p_a").is_not_null())
            p = sides["p_a"].cast(pl.Float64).to_numpy() if len(sides) else None
        emb = None
        if "embedding" in frame.columns and len(frame) and not frame["embedding"].null_count():
            emb = np.asarray(frame["embedding"].cast(pl.List(pl.Float32)).to_list(), dtype=np.float32)
        groups = None
        for column in ("prompt_sha256", "prompt", "request_id"):
            if column in frame.columns and not frame[column].null_count():
                groups = frame[column].cast(pl.String).to_numpy()
                break
        return cls(scores, p, emb, groups)


Reference = Sample
Window = Sample


# -------------------------------------------------------------------------------------------------- statistics


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index Σ (c − r)·ln(c / r) over bins whose edges are the reference's quantiles
    (``bins`` equal-mass bins; ties merge bins), each proportion floored at ``floor``."""
    reference, current = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    r, c = np.maximum(r, floor), np.maximum(c, floor)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic (the largest gap between the two empirical CDFs)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(reference, current).statistic)


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance between the two samples ÷ the reference's standard deviation (a shift of the whole
    distribution by d reference sd gives d)."""
    from scipy.stats import wasserstein_distance

    sd = float(np.std(reference))
    distance = float(wasserstein_distance(reference, current))
    return distance / sd if sd > 0 else (0.0 if distance == 0 else math.inf)


def expected_accuracy(p: np.ndarray) -> float:
    """Label-free expected pairwise accuracy of a calibrated model: E[max(p, 1 − p)] (each pair is decided for the
    likelier side, and is right with that probability when p is calibrated)."""
    p = np.asarray(p, dtype=np.float64)
    return float(np.mean(np.maximum(p, 1.0 - p)))


def classifier_auc(reference: np.ndarray, current: np.ndarray, *, folds: int = 5, seed: int = 0,
                   c: float = 1.0) -> float:
    """Domain-classifier two-sample test: the cross-validated ROC AUC of a logistic regression (on standardised
    features) telling ``current`` rows from ``reference`` rows. 0.5: indistinguishable; 1: fully separated."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([reference, current]).astype(np.float64)
    y = np.concatenate([np.zeros(len(reference), dtype=np.int8), np.ones(len(current), dtype=np.int8)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, x, y, cv=cv, scoring="roc_auc")))


def mean_shift(reference: np.ndarray, current: np.ndarray) -> float:
    """(mean of ``current`` − mean of ``reference``) ÷ the reference's standard deviation: signed, in reference sd."""
    reference = np.asarray(reference, dtype=np.float64)
    return float((np.mean(current) - reference.mean()) / reference.std())


def clustered_se_of_mean(values: np.ndarray, groups: np.ndarray | None = None) -> float:
    """The cluster-robust standard error of the mean of ``values`` with ``groups`` as the clusters (each item its own
    cluster without): sqrt(G/(G − 1) · Σ_g (Σ_{i∈g} (x_i − x̄))²) / n — what statsmodels' OLS on a constant with
    ``cov_type="cluster"`` reports. Items of one prompt move together, so this is larger than sd/√n."""
    x = np.asarray(values, dtype=np.float64)
    codes = np.arange(len(x)) if groups is None else np.unique(groups, return_inverse=True)[1]
    sums = np.bincount(codes, weights=x - x.mean())
    g = len(sums)
    if g < 2:
        raise DriftInputError("every item is of one prompt (group): a mean over prompts needs at least two")
    return float(np.sqrt(g / (g - 1) * np.sum(sums ** 2)) / len(x))


@dataclass(frozen=True)
class LocationNull:
    """Standard errors of the signed mean shift, in reference sd: ``window`` for a window's mean (the reference's
    clustered SE scaled to the window's size: the same traffic, fewer items) and ``reference`` for the reference's
    own mean. The average shift of m windows against the reference has SE sqrt(window²/m + reference²)."""

    window: float
    reference: float

    def pooled_se(self, m: int) -> float:
        return math.sqrt(self.window ** 2 / m + self.reference ** 2)

    @classmethod
    def of(cls, reference: Sample, window: int) -> LocationNull:
        se = clustered_se_of_mean(reference.scores, reference.groups) / float(reference.scores.std())
        return cls(window=se * math.sqrt(reference.n / window), reference=se)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """The median heuristic: the median Euclidean distance between distinct rows of ``x`` (a seeded subsample of
    at most ``max_points`` rows)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    d = np.sqrt(_sq_dists(x, x)[np.triu_indices(len(x), k=1)])
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased squared maximum mean discrepancy with the RBF kernel exp(−‖a − b‖² / (2·bandwidth²)).

    Written here (a few lines of numpy) rather than taken from a library: none in this environment has a maintained
    median-heuristic MMD (alibi-detect and torch-two-sample are not dependencies). About 0 for samples from one
    distribution (it can be slightly negative), larger the further apart they are."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    gamma = 1.0 / (2.0 * bandwidth ** 2)
    kxx = np.exp(-gamma * _sq_dists(x, x))
    kyy = np.exp(-gamma * _sq_dists(y, y))
    kxy = np.exp(-gamma * _sq_dists(x, y))
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


# ------------------------------------------------------------------------------------------------- calibration


@dataclass
class NullSummary:
    """One statistic's empirical null: its reference-versus-reference values and the threshold they give."""

    measured: bool
    threshold: float | None = None
    null_mean: float | None = None
    null_sd: float | None = None
    statistics: list[float] = field(default_factory=list)
    note: str | None = None


@dataclass
class Calibration:
    """Every statistic's threshold for one reference, computed once (:func:`calibrate`) and stored next to the
    release as JSON (:meth:`to_json`); :func:`check` refuses a reference whose hash differs."""

    settings: dict[str, Any]
    reference_size: dict[str, int]
    reference_hash: str
    tests: dict[str, NullSummary]
    bandwidth: float | None = None
    location: dict[str, float] | None = None  # LocationNull's fields
    seconds: float = 0.0
    version: int = CALIBRATION_VERSION

    @property
    def window(self) -> int:
        return int(self.settings["window"])

    def location_null(self) -> LocationNull:
        return LocationNull(**self.location)

    def drift_settings(self) -> DriftSettings:
        return DriftSettings.from_dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"not a drift calibration of version {CALIBRATION_VERSION}")
        try:
            tests = {name: NullSummary(**summary) for name, summary in data["tests"].items()}
            return cls(**{**data, "tests": tests})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a drift calibration: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls.from_dict(json.loads(text))


def null_split(n: int, window: int, groups: np.ndarray | None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(window, rest) item indices of one null comparison: ``window`` items drawn without replacement, whole
    groups at a time (the group cut at the window's edge gives its remaining items to neither side)."""
    if groups is None:
        order = rng.permutation(n)
        return order[:window], order[window:]
    rank = rng.permutation(int(groups.max()) + 1)
    order = np.argsort(rank[groups], kind="stable")
    win, rest = order[:window], order[window:]
    return win, rest[groups[rest] != groups[win[-1]]]


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, cap, replace=False)) if n > cap else np.arange(n)


def _statistics(reference: Sample, current: Sample, s: DriftSettings, bandwidth: float | None,
                rng: np.random.Generator, names: Sequence[str]) -> dict[str, float]:
    """Each named statistic of ``current`` against ``reference`` (inputs already checked and cut to size)."""
    out: dict[str, float] = {}
    if "psi" in names:
        out["psi"] = psi(reference.scores, current.scores, s.psi_bins, s.psi_floor)
    if "ks" in names:
        out["ks"] = ks_statistic(reference.scores, current.scores)
    if "wasserstein" in names:
        out["wasserstein"] = wasserstein_normed(reference.scores, current.scores)
    if "mean_shift" in names:
        out["mean_shift"] = abs(mean_shift(reference.scores, current.scores))
    if "expected_accuracy_drop" in names:
        out["expected_accuracy_drop"] = expected_accuracy(reference.p) - expected_accuracy(current.p)
    if "classifier_auc" in names or "mmd" in names:
        ref_emb, cur_emb = reference.prompt_embeddings(), current.prompt_embeddings()
    if "classifier_auc" in names:
        ref = ref_emb[_subsample(len(ref_emb), s.classifier_reference_cap, rng)]
        out["classifier_auc"] = classifier_auc(ref, cur_emb, folds=s.classifier_folds, seed=s.seed, c=s.classifier_c)
    if "mmd" in names:
        ref = ref_emb[_subsample(len(ref_emb), s.mmd_reference_cap, rng)]
        out["mmd"] = mmd2(ref, cur_emb, bandwidth)
    return out


def calibrate(reference: Sample, settings: DriftSettings | None = None) -> Calibration:
    """Every statistic's empirical-null threshold for ``reference`` and windows of ``settings.window`` items.

    ``null_windows`` times: a window of ``window`` items (and ``pair_window`` pairs) is drawn from the reference
    without replacement and compared with the rest of it; threshold = mean + k·sd of those statistics. The
    expected-accuracy test needs at least 2·pair_window reference pairs and the embedding tests reference
    embeddings; otherwise they are recorded as not calibrated (and never alarm)."""
    s = settings or DriftSettings()
    started = time.perf_counter()
    n, w = reference.n, s.window
    if n < 2 * w:
        raise DriftInputError(f"the reference has {n} items; windows of {w} need at least {2 * w} (a window and a "
                              "held-out rest of at least its size for each null comparison)")
    if reference.scores.std() == 0:
        raise DriftInputError("every reference score is the same: there is no distribution to compare with")
    location = dataclasses.asdict(LocationNull.of(reference, w))  # refuses a reference of one prompt
    notes: dict[str, str] = {}
    if reference.n_pairs < 2 * s.pair_window:
        notes["expected_accuracy_drop"] = (f"the reference has {reference.n_pairs} compared pairs; the test needs "
                                           f"at least {2 * s.pair_window} (2 × pair_window)")
    if reference.embeddings is None:
        for name in EMBEDDING_TESTS:
            notes[name] = "the reference has no prompt embeddings"
    names = [t for t in TESTS if t not in notes]
    bandwidth = (median_bandwidth(reference.prompt_embeddings(), s.mmd_reference_cap, s.seed)
                 if reference.embeddings is not None else None)
    rng = np.random.default_rng(s.seed)
    nulls: dict[str, list[float]] = {t: [] for t in names}
    for _ in range(s.null_windows):
        win, rest = null_split(n, w, reference.groups, rng)
        p_win = p_rest = None
        if "expected_accuracy_drop" in names:
            p_order = rng.permutation(reference.n_pairs)
            p_win, p_rest = reference.p[p_order[:s.pair_window]], reference.p[p_order[s.pair_window:]]
        emb, groups = reference.embeddings, reference.groups
        current = Sample(reference.scores[win], p_win, None if emb is None else emb[win],
                         None if groups is None else groups[win])
        held_out = Sample(reference.scores[rest], p_rest, None if emb is None else emb[rest],
                          None if groups is None else groups[rest])
        for name, value in _statistics(held_out, current, s, bandwidth, rng, names).items():
            nulls[name].append(value)
    tests = {}
    for name in TESTS:
        if name in notes:
            tests[name] = NullSummary(measured=False, note=notes[name])
            continue
        values = np.asarray(nulls[name])
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        tests[name] = NullSummary(measured=True, threshold=mean + s.k * sd, null_mean=mean, null_sd=sd,
                                  statistics=[float(v) for v in values])
    return Calibration(settings=s.to_dict(), reference_size=reference.size(), reference_hash=reference.digest,
                       tests=tests, bandwidth=bandwidth, location=location, seconds=time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------------- checking


@dataclass
class TestResult:
    """One statistic on one window, with the threshold it is judged against and how that was calibrated."""

    name: str
    statistic: float | None
    threshold: float | None
    alarm: bool
    measured: bool
    null_mean: float | None = None
    null_sd: float | None = None
    note: str | None = None
    detail: dict[str, float] = field(default_factory=dict)

    __test__ = False  # not a pytest class

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Location:
    """A window's signed mean shift (reference sd), with what the pooled location rule judges it by."""

    shift: float
    null: LocationNull
    k: float


@dataclass
class WindowResult:
    """A window against the reference: ``alarm`` when any measured statistic is over its threshold; ``location``
    feeds the pooled location rule of :class:`AlarmHistory`."""

    alarm: bool
    window: int
    tests: list[TestResult]
    calibration: dict[str, Any]
    seconds: float = 0.0
    location: Location | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "window": self.window, "tests": [t.to_dict() for t in self.tests],
                "calibration": self.calibration, "seconds": self.seconds,
                "location": None if self.location is None else dataclasses.asdict(self.location)}

    def test(self, name: str) -> TestResult:
        return next(t for t in self.tests if t.name == name)


def _check_settings(calibration: Calibration, settings: DriftSettings | None) -> DriftSettings:
    stored = calibration.drift_settings()
    if settings is None:
        return stored
    differ = [f for f in stored.field_names() if f not in NOT_CALIBRATED
              and getattr(settings, f) != getattr(stored, f)]
    if differ:
        raise DriftInputError("the calibration was made with other settings ("
                              + ", ".join(f"{f}={getattr(stored, f)!r} not {getattr(settings, f)!r}" for f in differ)
                              + "): calibrate again")
    return settings


def check(calibration: Calibration, reference: Sample, current: Sample,
          settings: DriftSettings | None = None) -> WindowResult:
    """Compare one window with the reference the calibration was made for.

    The window's most recent ``window`` items (and ``pair_window`` pairs) are used; fewer items is an error (the
    thresholds hold for windows of exactly that size), fewer pairs or no embeddings leave those tests not measured.
    ``settings`` default to the calibration's; given, they must agree with them except for the persistence rule."""
    started = time.perf_counter()
    s = _check_settings(calibration, settings)
    if reference.digest != calibration.reference_hash:
        raise DriftInputError("the reference is not the one this calibration was made for (hash "
                              f"{reference.digest[:12]}… ≠ {calibration.reference_hash[:12]}…): calibrate again")
    if current.n < s.window:
        raise DriftInputError(f"the window has {current.n} items; the thresholds are calibrated for {s.window} "
                              "(wait for more, or calibrate for smaller windows)")
    cut = current.last(s.window, s.pair_window)
    notes = {name: summary.note for name, summary in calibration.tests.items() if not summary.measured}
    if cut.n_pairs < s.pair_window:
        notes.setdefault("expected_accuracy_drop", f"the window has {cut.n_pairs} compared pairs; the test needs "
                                                   f"pair_window={s.pair_window}")
    if cut.embeddings is None:
        for name in EMBEDDING_TESTS:
            notes.setdefault(name, "the window has no prompt embeddings")
    elif cut.groups is None and reference.groups is not None:
        for name in EMBEDDING_TESTS:
            notes.setdefault(name, "the window has no groups (prompts) and the reference has: its prompts cannot be "
                                   "told apart from repeated items")
    elif reference.embeddings is not None and cut.embeddings.shape[1] != reference.embeddings.shape[1]:
        raise DriftInputError(f"the window's embeddings have {cut.embeddings.shape[1]} dimensions, the "
                              f"reference's {reference.embeddings.shape[1]}")
    names = [t for t in TESTS if t not in notes]
    values = _statistics(reference, cut, s, calibration.bandwidth, np.random.default_rng(s.seed), names)
    tests = []
    for name in TESTS:
        summary = calibration.tests[name]
        if name in notes:
            tests.append(TestResult(name, None, summary.threshold, False, False, summary.null_mean, summary.null_sd,
                                    notes[name]))
            continue
        value = values[name]
        detail = {}
        if name == "expected_accuracy_drop":
            detail = {"reference": expected_accuracy(reference.p), "current": expected_accuracy(cut.p)}
        if name == "mean_shift":
            detail = {"signed": mean_shift(reference.scores, cut.scores)}
        tests.append(TestResult(name, value, summary.threshold, bool(value > summary.threshold), True,
                                summary.null_mean, summary.null_sd, None, detail))
    meta = {"k": s.k, "null_windows": s.null_windows, "window": s.window, "pair_window": s.pair_window,
            "reference_size": calibration.reference_size, "reference_hash": calibration.reference_hash,
            "rule": f"alarm when a statistic > null mean + {s.k:g}·sd over {s.null_windows} reference-vs-reference "
                    f"windows of {s.window}"}
    location = Location(mean_shift(reference.scores, cut.scores), calibration.location_null(), s.k)
    return WindowResult(any(t.alarm for t in tests), cut.n, tests, meta, time.perf_counter() - started, location)


# ------------------------------------------------------------------------------------------------- persistence


def persistent(alarms: Sequence[bool], persist_k: int = 2, persist_n: int = 3) -> bool:
    """The persistence rule: at least ``persist_k`` of the last ``persist_n`` windows alarmed."""
    if not 1 <= persist_k <= persist_n:
        raise ValueError(f"need 1 <= persist_k <= persist_n, got {persist_k}, {persist_n}")
    return sum(bool(a) for a in list(alarms)[-persist_n:]) >= persist_k


@dataclass
class AlarmHistory:
    """The last ``persist_n`` windows — their alarms and signed mean shifts — for a sensor's cursor (:meth:`to_json` /
    :meth:`from_json`). Active when ``persist_k`` of them alarmed (the vote) or, with ``pool_location``, when their
    average mean shift is over k of its standard errors (``pooled_z``: that average ÷ its SE, once persist_n windows
    with a shift are in)."""

    persist_k: int = 2
    persist_n: int = 3
    alarms: list[bool] = field(default_factory=list)
    shifts: list[float] = field(default_factory=list)
    pooled_z: float | None = None
    pooled_alarm: bool = False
    pool_location: bool = True

    def __post_init__(self) -> None:
        persistent([], self.persist_k, self.persist_n)  # validates k and n
        self.alarms = [bool(a) for a in self.alarms][-self.persist_n:]
        self.shifts = [float(x) for x in self.shifts][-self.persist_n:]

    @classmethod
    def for_settings(cls, settings: DriftSettings) -> AlarmHistory:
        return cls(settings.persist_k, settings.persist_n, pool_location=settings.pool_location)

    def update(self, alarm: bool, location: Location | None = None) -> bool:
        """Record one window's alarm (and its :class:`Location`; without one the pooled rule starts over); True when
        the persistence rule now holds."""
        self.alarms = [*self.alarms, bool(alarm)][-self.persist_n:]
        self.shifts = [] if location is None else [*self.shifts, float(location.shift)][-self.persist_n:]
        self.pooled_z, self.pooled_alarm = None, False
        if location is not None and len(self.shifts) == self.persist_n:
            self.pooled_z = abs(float(np.mean(self.shifts))) / location.null.pooled_se(self.persist_n)
            self.pooled_alarm = self.pool_location and self.pooled_z > location.k
        return self.active

    @property
    def active(self) -> bool:
        return persistent(self.alarms, self.persist_k, self.persist_n) or self.pooled_alarm

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AlarmHistory:
        return cls(**json.loads(text))
