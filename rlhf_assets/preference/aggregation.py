"""Aggregate several annotators' labels per item: majority vote and Dawid-Skene.

Dawid-Skene (1979) gives each annotator w a confusion matrix ``pi[w, k, l] = P(w answers l | true class k)`` and the
classes a prior ``p[k]``, and fits both by EM over the integer-coded label rows (item, worker, label):

* E-step: ``log q[i, k] = log p[k] + sum of log pi[w, k, l] over the labels (w, l) of item i``, normalised per item
  with log-sum-exp;
* M-step: ``p = mean_i q[i]``; ``n[w, k, l]`` = sum of ``q[i, k]`` over the labels l that w gave to items i;
  ``pi[w, k, :] = n[w, k, :] / sum_l n[w, k, l]``.

Both steps are ``np.bincount`` / ``np.take`` over the rows; the only Python loop is over the K classes. The start
(majority-vote shares), the 1e-10 floor on counts and priors and the stopping rule (the change of the evidence lower
bound per label falls below ``tol``) follow crowd-kit 1.4.2's ``DawidSkene`` so that the two agree.

Shrinkage: an annotator with two labels otherwise gets a confusion matrix of zeros and ones, i.e. a near-decisive
vote. With ``shrinkage = s > 0`` each row becomes ``(n[w, k, :] + s * pooled[k, :]) / (sum_l n[w, k, l] + s)``, where
``pooled`` is the row-normalised confusion matrix summed over all annotators: a pseudo-count of total weight s
centred on the crowd's behaviour, which barely moves annotators with many labels.

Vote weights (``weights``, one per label row, e.g. a flagged annotator's votes at 0.25): majority vote counts
weighted votes; Dawid-Skene raises each label's likelihood to its weight (a tempered, "power" likelihood: in the
E-step ``log q[i, k] = log p[k] + sum of w * log pi[w, k, l]``) and weights the confusion counts alike, so EM still
increases one objective. A weight of 1 everywhere is the unweighted model exactly; 0 would drop the label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

_EPS = 1e-10  # crowd-kit's floor for confusion counts, priors and posteriors
METHODS = ("dawid-skene", "majority")


@dataclass(frozen=True)
class AggregationResult:
    labels: np.ndarray  # (n_items,) argmax class code per item
    posteriors: np.ndarray  # (n_items, K)
    confusion: np.ndarray | None  # (n_workers, K true, K observed), rows sum to 1; None for majority vote
    priors: np.ndarray  # (K,)
    n_iter: int
    converged: bool
    log_likelihood: float  # evidence lower bound per label at the last iteration (NaN for majority vote)
    method: str


@dataclass(frozen=True)
class AggregationSummary:
    n_items: int
    n_annotators: int
    n_rows: int
    n_classes: int
    classes: tuple[Any, ...]
    method: str
    n_iter: int
    converged: bool


def _codes(name: str, values: Any, declared: int | None, size_name: str) -> tuple[np.ndarray, int]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer codes, got dtype {arr.dtype}; use aggregate_table for raw ids")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(f"{name} must be non-negative codes, found {lo}")
    if declared is None:
        return arr.astype(np.intp, copy=False), hi + 1
    if declared <= hi:
        raise ValueError(f"{name} contains code {hi} but {size_name}={declared} (codes must be < {size_name})")
    return arr.astype(np.intp, copy=False), int(declared)


def _validate(items, workers, labels, n_items, n_workers, n_classes):
    lengths = {len(np.asarray(a)) for a in (items, workers, labels)}
    if len(lengths) != 1:
        raise ValueError(f"items, workers and labels must have the same length, got {sorted(lengths)}")
    if lengths == {0}:
        raise ValueError("no labels to aggregate: items, workers and labels are empty")
    if n_classes is not None and n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    items, n_items = _codes("items", items, n_items, "n_items")
    workers, n_workers = _codes("workers", workers, n_workers, "n_workers")
    labels, n_classes = _codes("labels", labels, n_classes, "n_classes")
    return items, workers, labels, n_items, n_workers, n_classes


def _vote_counts(items: np.ndarray, labels: np.ndarray, n_items: int, k: int,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """(K, n_items) number (or total weight) of votes for each class."""
    index = items * k
    index += labels
    counts = np.bincount(index, weights=weights, minlength=n_items * k)
    return np.ascontiguousarray(counts.reshape(n_items, k).T, dtype=np.float64)


def _check_weights(weights, n_rows: int) -> np.ndarray | None:
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_rows,):
        raise ValueError(f"weights must have one entry per label row ({n_rows}), got shape {weights.shape}")
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return weights


def _shares(votes: np.ndarray) -> np.ndarray:
    total = votes.sum(axis=0)
    return np.divide(votes, total, out=np.full_like(votes, 1.0 / len(votes)), where=total > 0)


def _confusion_counts(post, items, cell, n_workers, out=None, weights=None):
    """n[w, k, l]: the posterior mass of class k on the rows where worker w answered l (added to ``out``), each row
    counted with its weight when ``weights`` is given."""
    k = post.shape[0]
    counts = np.zeros((n_workers, k, k)) if out is None else out
    for c in range(k):
        mass = np.take(post[c], items)
        if weights is not None:
            mass *= weights
        counts[:, c, :] += np.bincount(cell, weights=mass, minlength=n_workers * k).reshape(-1, k)
    return counts


def _m_step(post, items, cell, observed, n_workers, shrinkage, weights=None):
    """Confusion counts n[w, k, l] and the normalised (shrunk) confusion matrices."""
    return _normalise(_confusion_counts(post, items, cell, n_workers, weights=weights), observed, shrinkage)


def _normalise(counts, observed, shrinkage):
    """(counts, confusion matrices, their logs) from the confusion counts; see the module docstring."""
    k = counts.shape[1]
    if shrinkage > 0:
        pooled = counts.sum(axis=0)
        totals = pooled.sum(axis=1, keepdims=True)
        pooled = np.divide(pooled, totals, out=np.full_like(pooled, 1.0 / k), where=totals > 0)
        numer = np.maximum(counts + shrinkage * pooled, _EPS)
    else:  # like crowd-kit: floor only the (worker, observed label) cells that occur
        numer = np.where(observed, np.maximum(counts, _EPS), 0.0)
    denom = numer.sum(axis=2, keepdims=True)
    conf = np.divide(numer, denom, out=np.zeros_like(numer), where=denom > 0)
    return counts, conf, np.log(conf, out=np.zeros_like(conf), where=conf > 0)  # unused cells: log 0 := 0


def _e_step(log_conf, log_prior, cell, out, sum_per_item):
    """Posteriors (K, n_items) from the log confusion matrices and log priors, written into ``out``; returns them
    and the sum of q log q. ``sum_per_item(row values)`` adds the values of each item's rows: a bincount over item
    codes in memory, a reduceat over contiguous rows out of core."""
    for c in range(len(log_prior)):
        table = np.ascontiguousarray(log_conf[:, c, :]).ravel()  # log pi[w, c, l] at w * K + l
        out[c] = sum_per_item(np.take(table, cell))
        out[c] += log_prior[c]
    out -= out.max(axis=0)
    log_post = out.copy()
    np.exp(out, out=out)
    total = out.sum(axis=0)
    out /= total
    # The H(q) term of the evidence bound with crowd-kit's floor, sum of max(q, eps) * log max(q, eps), where
    # log q = x - log(sum exp x) takes one log per item instead of one per item and class.
    log_post -= np.log(total)
    np.maximum(log_post, np.log(_EPS), out=log_post)
    return out, float(np.vdot(np.maximum(out, _EPS), log_post))


def _check_options(max_iter, tol, shrinkage) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if not shrinkage >= 0:
        raise ValueError(f"shrinkage must be >= 0 (a pseudo-count), got {shrinkage!r}")


def _fit(items, cell, post, n_workers, max_iter, tol, shrinkage, weights=None) -> AggregationResult:
    """EM from initial posteriors ``post`` (K, n_items); ``cell`` = worker * K + label for each row; ``weights``:
    one vote weight per row (None: all 1)."""
    _check_options(max_iter, tol, shrinkage)
    k, n_items = post.shape
    observed = (np.bincount(cell, minlength=n_workers * k) > 0).reshape(n_workers, 1, k)
    n_votes = np.bincount(items, minlength=n_items).astype(np.float64)
    priors = post.mean(axis=1)
    counts, conf, log_conf = _m_step(post, items, cell, observed, n_workers, shrinkage, weights)
    loss, converged, it = -np.inf, False, 0

    def sum_per_item(values):
        return np.bincount(items, weights=values if weights is None else values * weights, minlength=n_items)

    for it in range(1, max_iter + 1):  # noqa: B007 -- `it` is the iteration count reported after the loop
        log_prior = np.log(np.maximum(priors, _EPS))
        post, neg_entropy = _e_step(log_conf, log_prior, cell, post, sum_per_item)
        priors = post.mean(axis=1)
        counts, conf, log_conf = _m_step(post, items, cell, observed, n_workers, shrinkage, weights)
        # Evidence lower bound per label, as crowd-kit computes it: E_q[log p(z) + log p(labels | z)] + H(q).
        elbo = np.sum(counts * log_conf) + np.log(np.maximum(priors, _EPS)) @ (post @ n_votes) - neg_entropy
        new_loss, previous = float(elbo) / len(items), loss
        loss = new_loss
        if new_loss - previous < tol:
            converged = True
            break
    return AggregationResult(labels=post.argmax(axis=0), posteriors=np.ascontiguousarray(post.T), confusion=conf,
                             priors=priors, n_iter=it, converged=converged, log_likelihood=loss,
                             method="dawid-skene")


def _initial_posteriors(init: Any, votes: Any, n_items: int, k: int) -> np.ndarray:
    if isinstance(init, str):
        if init != "majority":
            raise ValueError(f"init must be 'majority' or an (n_items, n_classes) array, got {init!r}")
        return _shares(votes())
    post = np.array(init, dtype=np.float64).T
    if post.shape != (k, n_items) or not np.all(np.isfinite(post)) or (post < 0).any() or (post.sum(0) == 0).any():
        raise ValueError(f"init array must be finite, non-negative, with positive rows, of shape ({n_items}, {k})")
    return np.ascontiguousarray(post / post.sum(axis=0))


def dawid_skene(items, workers, labels, *, n_items: int | None = None, n_workers: int | None = None,
                n_classes: int | None = None, max_iter: int = 100, tol: float = 1e-5, shrinkage: float = 0.0,
                init: str | np.ndarray = "majority", weights=None) -> AggregationResult:
    """Dawid-Skene EM over integer codes (one entry per label row). See the module docstring.

    ``init`` is "majority" (vote shares, like crowd-kit) or an (n_items, n_classes) array of initial posteriors;
    ``weights`` one vote weight per row (None: unweighted).
    """
    items, workers, labels, n_items, n_workers, k = _validate(items, workers, labels, n_items, n_workers, n_classes)
    weights = _check_weights(weights, len(items))
    post = _initial_posteriors(init, lambda: _vote_counts(items, labels, n_items, k, weights), n_items, k)
    cell = workers * k
    cell += labels  # the (worker, observed label) cell of each row
    return _fit(items, cell, post, n_workers, max_iter, tol, shrinkage, weights)


def _majority(votes: np.ndarray, seed: int = 0) -> AggregationResult:
    shares = _shares(votes)
    jitter = np.random.default_rng(seed).random(votes.shape)
    # the jitter picks among the classes tied for the most votes only (weighted votes differ by less than 1)
    tied = np.isclose(votes, votes.max(axis=0), rtol=0, atol=1e-9)
    chosen = np.where(tied, jitter, -1.0).argmax(axis=0)
    return AggregationResult(labels=chosen, posteriors=np.ascontiguousarray(shares.T), confusion=None,
                             priors=shares.mean(axis=1), n_iter=0, converged=True, log_likelihood=float("nan"),
                             method="majority")


def majority_vote(items, workers, labels, *, n_items: int | None = None, n_classes: int | None = None,
                  seed: int = 0, weights=None) -> AggregationResult:
    """Most frequent label per item (by total weight with ``weights``, one per row); ties broken uniformly at random
    by a seeded RNG. Posteriors are (weighted) vote shares."""
    items, _, labels, n_items, _, k = _validate(items, workers, labels, n_items, None, n_classes)
    return _majority(_vote_counts(items, labels, n_items, k, _check_weights(weights, len(items))), seed)


def _encode(name: str, values: Any, sort: bool, size_hint: int) -> tuple[np.ndarray, Any]:
    """Integer codes and the distinct values (sorted when ``sort``) of ids or labels given in any 1-D form.

    numpy-backed input goes through pd.factorize with a small ``size_hint`` (the default sizes the hash table to the
    input length, tripling the peak memory); pandas extension arrays (arrow strings, categoricals) use their own.
    """
    if isinstance(values, pl.Series):
        values = values.to_pandas()
    if isinstance(values, (pd.Series, pd.Index)) and not isinstance(values.dtype, np.dtype):
        codes, uniques = pd.factorize(values, sort=sort)
    else:
        array = values.to_numpy() if isinstance(values, (pd.Series, pd.Index)) else np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
        codes, uniques = pd.factorize(array, sort=sort, size_hint=min(len(array), size_hint))
    if len(codes) and codes.min() < 0:
        raise ValueError(f"{name} contains missing values")
    return codes, uniques


def aggregate_table(item_ids, annotator_ids, labels, *, method: str = "dawid-skene",
                    **kwargs: Any) -> tuple[pl.DataFrame, AggregationSummary]:
    """Aggregate raw (item id, annotator id, label) rows; returns one row per item sorted by item_id.

    Columns: item_id, label (a value of ``labels``), confidence (posterior of that label), n_votes.
    Classes are the sorted distinct label values. ``kwargs`` go to ``dawid_skene`` or ``majority_vote``
    (max_iter, tol, shrinkage, init / seed).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lengths = {len(item_ids), len(annotator_ids), len(labels)}
    if len(lengths) != 1:
        raise ValueError(f"item_ids, annotator_ids and labels must have the same length, got {sorted(lengths)}")
    if lengths == {0}:
        raise ValueError("no labels to aggregate: item_ids, annotator_ids and labels are empty")
    # Encoded one column at a time, so that at most two row-length arrays stay alive: items and (worker, label) cells.
    items, item_values = _encode("item_ids", item_ids, sort=True, size_hint=1 << 16)
    label_codes, classes = _encode("labels", labels, sort=True, size_hint=64)
    label_codes = label_codes.astype(np.min_scalar_type(len(classes)))
    n_items, k = len(item_values), len(classes)

    def count_votes() -> np.ndarray:
        return _vote_counts(items, label_codes, n_items, k)  # noqa: F821 -- called before `del label_codes`

    if method == "majority":
        result = _majority(count_votes(), **kwargs)
    else:
        options = dict(max_iter=100, tol=1e-5, shrinkage=0.0, init="majority") | kwargs
        post = _initial_posteriors(options.pop("init"), count_votes, n_items, k)
    cell, worker_values = _encode("annotator_ids", annotator_ids, sort=False, size_hint=1 << 12)
    cell *= k
    cell += label_codes
    del label_codes
    if method != "majority":
        result = _fit(items, cell, post, len(worker_values), **options)
    table = pl.DataFrame({
        "item_id": pl.from_pandas(pd.Series(item_values)),
        "label": pl.from_pandas(pd.Series(classes).take(result.labels)),
        "confidence": np.take_along_axis(result.posteriors, result.labels[:, None], axis=1)[:, 0],
        "n_votes": np.bincount(items, minlength=n_items),
    })
    summary = AggregationSummary(n_items=n_items, n_annotators=len(worker_values), n_rows=len(items), n_classes=k,
                                 classes=tuple(pd.Series(classes).tolist()), method=method, n_iter=result.n_iter,
                                 converged=result.converged)
    return table, summary
