"""A seeded simulator of a crowd-annotator panel judging response pairs.

Input pairs are ``{prompt, chosen, rejected}`` dicts whose ground truth is "chosen is better" (e.g. from
:func:`rlhf_assets.preference.sample_data.load_hh_pairs`). Each pair is judged by several distinct annotators
of a panel with known behaviour (good, noisy, spammer, position-biased, tie-happy); every judgement shows the
two responses in its own random order, so ``label == "a"`` means the response shown first was picked. The
output records follow :mod:`rlhf_assets.preference.schema`; :func:`write_landing` drops them into the
date-partitioned landing layout the ingest reads.

Everything is driven by one ``numpy.random.Generator`` seeded from ``seed``: the same inputs and seed give
identical records, and identical bytes from :func:`write_landing`.

Nothing here imports Dagster.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from rlhf_assets.preference.schema import FIELD_NAMES, FIELDS, is_canonical_order, pair_id

KINDS = ("good", "noisy", "spammer", "position_biased", "tie_happy")

BAD_KINDS = (
    "bad_label",  # label "A", "B" or "maybe"
    "missing_annotator_id",  # key absent or null
    "identical_responses",  # response_b == response_a
    "created_at_outside_day",  # timestamp on the day before / after the partition date
    "duplicate_comparison_id",  # reuses the comparison_id of another record of the same batch
)

POLICY_CHOSEN = "hh-chosen"
POLICY_REJECTED = "hh-rejected"

_LANDING_FORMATS = ("jsonl", "jsonl.gz", "parquet")


@dataclass(frozen=True)
class AnnotatorProfile:
    """How one simulated annotator behaves.

    Per judgement: with probability ``p_tie`` the answer is ``tie``. Otherwise a position-biased annotator
    (``p_first`` set) picks the first-shown response with probability ``p_first`` whatever the content; any
    other annotator picks the truly better response with probability ``accuracy`` (so ``accuracy`` is the
    agreement with the truth among non-tie answers). A spammer is ``p_tie = 1/3, accuracy = 0.5``: uniform
    over a / b / tie.
    """

    annotator_id: str
    kind: str
    accuracy: float
    p_tie: float
    p_first: float | None = None  # only for position-biased annotators
    workload: float = 1.0  # relative chance of being drawn for a pair
    median_ms: float = 30_000.0  # median time per judgement (lognormal)
    sigma_ms: float = 0.5  # lognormal shape of the time per judgement
    mean_confidence: float = 4.0  # mean self-reported confidence (1..5); spammers report uniformly

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("accuracy", "p_tie"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.p_first is not None and not 0.0 <= self.p_first <= 1.0:
            raise ValueError(f"p_first must be in [0, 1], got {self.p_first}")
        if self.workload <= 0 or self.median_ms <= 0 or self.sigma_ms < 0:
            raise ValueError("workload and median_ms must be > 0, sigma_ms >= 0")


def default_panel(n_annotators: int = 12, seed: int = 0) -> list[AnnotatorProfile]:
    """A realistic panel, mostly good annotators.

    Composition (fixed by ``n_annotators``; ``seed`` draws the parameters and which id gets which kind):
    1 position-biased (picks the first-shown response ~85% of the time), 1 spammer (2 from 16 annotators on),
    1 tie-happy (~40% ties; 2 from 14 on), ``n_annotators // 6`` noisy (at least 1; accuracy 0.6-0.7) and the
    rest good (accuracy 0.85-0.95) -- 7 of the default 12, a majority from 9 annotators on. Ids
    (``ann-000``...) do not reveal the kind.
    """
    if n_annotators < 6:
        raise ValueError("default_panel needs n_annotators >= 6 for its mix; build a custom panel instead")
    rng = np.random.default_rng([seed, 0x5EED])
    n_spam = 1 if n_annotators < 16 else 2
    n_tie = 1 if n_annotators < 14 else 2
    n_biased = 1
    n_noisy = max(1, n_annotators // 6)
    n_good = n_annotators - n_spam - n_tie - n_biased - n_noisy
    kinds = ["good"] * n_good + ["noisy"] * n_noisy + ["spammer"] * n_spam + ["tie_happy"] * n_tie
    kinds += ["position_biased"] * n_biased
    order = rng.permutation(n_annotators)

    panel: list[AnnotatorProfile] = []
    for i, k in enumerate(order):
        kind = kinds[int(k)]
        workload = float(rng.uniform(0.6, 1.4))
        if kind == "good":
            prof = dict(accuracy=rng.uniform(0.85, 0.95), p_tie=rng.uniform(0.02, 0.06),
                        median_ms=rng.uniform(25_000, 45_000), mean_confidence=rng.uniform(3.6, 4.4))
        elif kind == "noisy":
            prof = dict(accuracy=rng.uniform(0.6, 0.7), p_tie=rng.uniform(0.04, 0.10),
                        median_ms=rng.uniform(12_000, 30_000), mean_confidence=rng.uniform(3.0, 4.0))
        elif kind == "spammer":
            prof = dict(accuracy=0.5, p_tie=1 / 3, median_ms=rng.uniform(2_500, 6_000), mean_confidence=3.0)
        elif kind == "position_biased":
            prof = dict(accuracy=0.5, p_tie=rng.uniform(0.01, 0.03), p_first=rng.uniform(0.82, 0.88),
                        median_ms=rng.uniform(8_000, 18_000), mean_confidence=rng.uniform(3.8, 4.5))
        else:  # tie_happy
            prof = dict(accuracy=rng.uniform(0.8, 0.9), p_tie=rng.uniform(0.36, 0.44),
                        median_ms=rng.uniform(20_000, 40_000), mean_confidence=rng.uniform(2.5, 3.3))
        prof = {k: (float(v) if v is not None else None) for k, v in prof.items()}
        panel.append(AnnotatorProfile(annotator_id=f"ann-{i:03d}", kind=kind, workload=workload, **prof))
    return panel


@dataclass
class SimulatedBatch:
    """Simulated comparison records with their ground truth.

    ``records[i]`` is a schema record; ``record_dates[i]`` is the annotation date (partition) of its pair and
    ``bad_kinds[i]`` is the injected defect (one of :data:`BAD_KINDS`) or ``None`` for a clean row.
    ``truth`` maps ``pair_id`` to the correct label in the pair's canonical orientation
    (:func:`~rlhf_assets.preference.schema.is_canonical_order`): "a" when the chosen response is the
    canonical first one, else "b".
    """

    records: list[dict]
    truth: dict[str, str]
    annotators: list[AnnotatorProfile]
    n_bad: int
    batch_id: str
    record_dates: list[str] = field(default_factory=list)
    bad_kinds: list[str | None] = field(default_factory=list)

    def bad_counts(self) -> Counter:
        return Counter(k for k in self.bad_kinds if k is not None)


def _check_dates(dates: Sequence[str]) -> list[str]:
    if isinstance(dates, str) or not dates:
        raise ValueError("dates must be a non-empty list of 'YYYY-MM-DD' strings")
    out = []
    for d in dates:
        try:
            parsed = date.fromisoformat(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad date {d!r}: expected 'YYYY-MM-DD'") from e
        if parsed.isoformat() != d:
            raise ValueError(f"bad date {d!r}: expected 'YYYY-MM-DD'")
        out.append(d)
    return out


def _timestamp(day: str, second_of_day: int) -> str:
    t = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(seconds=int(second_of_day))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _comparison_id(batch_id: str, seed: int, pair_index: int, judgement: int) -> str:
    h = hashlib.sha256(f"{batch_id}\x1f{seed}\x1f{pair_index}\x1f{judgement}".encode()).hexdigest()[:20]
    return f"cmp-{h}"


def simulate_comparisons(
    pairs: Sequence[dict],
    *,
    dates: list[str],
    labels_per_pair: int = 5,
    panel: list[AnnotatorProfile] | None = None,
    seed: int = 0,
    bad_row_rate: float = 0.0,
    batch_id: str | None = None,
) -> SimulatedBatch:
    """Simulate ``labels_per_pair`` judgements by distinct panel annotators for each ``{prompt, chosen,
    rejected}`` pair (truth: chosen is better).

    Pairs are spread evenly over ``dates`` in contiguous blocks (pair ``i`` goes to
    ``dates[i * len(dates) // len(pairs)]``); all judgements of a pair fall on that day, with ``created_at``
    uniform inside it. Records come out pair by pair, in input order. ``bad_row_rate`` of the records
    (``round(bad_row_rate * n_records)``) are corrupted in place with one of :data:`BAD_KINDS` and tagged
    in ``bad_kinds``. ``batch_id`` defaults to ``f"sim-{seed}"``.
    """
    dates = _check_dates(dates)
    panel = list(panel) if panel is not None else default_panel(seed=seed)
    if not panel:
        raise ValueError("panel is empty")
    if len({a.annotator_id for a in panel}) != len(panel):
        raise ValueError("annotator ids in the panel must be unique")
    if not 1 <= labels_per_pair <= len(panel):
        raise ValueError(f"labels_per_pair must be in 1..{len(panel)} (panel size), got {labels_per_pair}")
    if not 0.0 <= bad_row_rate <= 1.0:
        raise ValueError(f"bad_row_rate must be in [0, 1], got {bad_row_rate}")
    batch_id = batch_id if batch_id is not None else f"sim-{seed}"

    n_pairs = len(pairs)
    k = labels_per_pair
    n_ann = len(panel)
    rng = np.random.default_rng(seed)

    # Who judges each pair: weighted sampling without replacement (Gumbel top-k on log workload).
    log_w = np.log(np.array([a.workload for a in panel], dtype=float))
    keys = log_w[None, :] + rng.gumbel(size=(n_pairs, n_ann))
    who = np.argsort(-keys, axis=1, kind="stable")[:, :k]

    # Per-judgement random draws, all up front (shape n_pairs x k).
    shape = (n_pairs, k)
    chosen_first = rng.random(shape) < 0.5
    u_tie = rng.random(shape)
    u_pick = rng.random(shape)
    z_time = rng.standard_normal(shape)
    z_conf = rng.standard_normal(shape)
    u_conf = rng.integers(1, 6, size=shape)
    second = rng.integers(0, 86_400, size=shape)

    p_tie = np.array([a.p_tie for a in panel])[who]
    acc = np.array([a.accuracy for a in panel])[who]
    biased = np.array([a.p_first is not None for a in panel])[who]
    p_first = np.array([a.p_first if a.p_first is not None else 0.5 for a in panel])[who]
    spammer = np.array([a.kind == "spammer" for a in panel])[who]
    median = np.array([a.median_ms for a in panel])[who]
    sigma = np.array([a.sigma_ms for a in panel])[who]
    mconf = np.array([a.mean_confidence for a in panel])[who]

    is_tie = u_tie < p_tie
    # Non-tie answer: did the annotator pick the first-shown response?
    pick_first = np.where(biased, u_pick < p_first, np.where(chosen_first, u_pick < acc, u_pick >= acc))
    ms = np.maximum(1, np.rint(median * np.exp(sigma * z_time))).astype(np.int64)
    conf = np.clip(np.rint(mconf - np.where(is_tie, 1.0, 0.0) + 0.8 * z_conf), 1, 5).astype(np.int64)
    conf = np.where(spammer, u_conf, conf)

    n_dates = len(dates)
    records: list[dict] = []
    record_dates: list[str] = []
    truth: dict[str, str] = {}
    for i, p in enumerate(pairs):
        prompt, good, bad = p["prompt"], p["chosen"], p["rejected"]
        if good == bad:
            raise ValueError(f"pair {i}: chosen and rejected responses are identical")
        pid = pair_id(prompt, good, bad)
        t = "a" if is_canonical_order(good, bad) else "b"
        if truth.setdefault(pid, t) != t:
            raise ValueError(f"pair {i}: the same pair occurs twice with opposite truth")
        day = dates[i * n_dates // n_pairs]
        for j in range(k):
            cf = bool(chosen_first[i, j])
            if is_tie[i, j]:
                label = "tie"
            else:
                label = "a" if pick_first[i, j] else "b"
            rec = {
                "comparison_id": _comparison_id(batch_id, seed, i, j),
                "prompt": prompt,
                "response_a": good if cf else bad,
                "response_b": bad if cf else good,
                "label": label,
                "annotator_id": panel[int(who[i, j])].annotator_id,
                "created_at": _timestamp(day, int(second[i, j])),
                "batch_id": batch_id,
                "policy_a": POLICY_CHOSEN if cf else POLICY_REJECTED,
                "policy_b": POLICY_REJECTED if cf else POLICY_CHOSEN,
                "annotation_ms": int(ms[i, j]),
                "confidence": int(conf[i, j]),
            }
            records.append({f: rec[f] for f in FIELD_NAMES if f in rec})
            record_dates.append(day)

    bad_kinds: list[str | None] = [None] * len(records)
    n_bad = int(round(bad_row_rate * len(records)))
    if n_bad:
        _inject_bad_rows(records, record_dates, bad_kinds, n_bad, np.random.default_rng([seed, 0xBAD]))

    return SimulatedBatch(
        records=records,
        truth=truth,
        annotators=panel,
        n_bad=n_bad,
        batch_id=batch_id,
        record_dates=record_dates,
        bad_kinds=bad_kinds,
    )


def _inject_bad_rows(
    records: list[dict], record_dates: list[str], bad_kinds: list[str | None], n_bad: int, rng: np.random.Generator
) -> None:
    n = len(records)
    idx = np.sort(rng.choice(n, size=n_bad, replace=False))
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)]
    kinds = [kinds[int(j)] for j in rng.permutation(n_bad)]
    if n_bad == n:  # nothing clean left to duplicate an id from
        kinds = [k if k != "duplicate_comparison_id" else "bad_label" for k in kinds]
    chosen = set(int(i) for i in idx)
    for i, kind in zip((int(x) for x in idx), kinds):
        rec = records[i]
        bad_kinds[i] = kind
        if kind == "bad_label":
            rec["label"] = str(rng.choice(["A", "B", "maybe"]))
        elif kind == "missing_annotator_id":
            if rng.random() < 0.5:
                del rec["annotator_id"]
            else:
                rec["annotator_id"] = None
        elif kind == "identical_responses":
            rec["response_b"] = rec["response_a"]
        elif kind == "created_at_outside_day":
            shift = int(rng.choice([-1, 1]))
            day = (date.fromisoformat(record_dates[i]) + timedelta(days=shift)).isoformat()
            rec["created_at"] = _timestamp(day, int(rng.integers(0, 86_400)))
        elif kind == "duplicate_comparison_id":
            # Reuse the id of the nearest clean record (same pair / same day in practice): a re-keyed row.
            j = _nearest_clean(i, n, chosen)
            rec["comparison_id"] = records[j]["comparison_id"]
        else:  # pragma: no cover
            raise AssertionError(kind)


def _nearest_clean(i: int, n: int, bad: set[int]) -> int:
    for d in range(1, n):
        for j in (i - d, i + d):
            if 0 <= j < n and j not in bad:
                return j
    raise AssertionError("no clean record")  # pragma: no cover - guarded by the caller


# --------------------------------------------------------------------------------------------------------------
# Landing files
# --------------------------------------------------------------------------------------------------------------


def _jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _records_frame(records: list[dict]) -> pl.DataFrame:
    dtypes = {f.name: f.dtype for f in FIELDS}
    present = [name for name in FIELD_NAMES if any(name in r for r in records)]
    extra = sorted({key for r in records for key in r} - set(FIELD_NAMES))
    schema = {name: dtypes[name] for name in present} | {name: pl.String() for name in extra}
    cols = {name: [r.get(name) for r in records] for name in schema}
    return pl.DataFrame(cols, schema=schema)


def landing_files(batch: SimulatedBatch, *, fmt: str = "jsonl") -> dict[str, tuple[str, bytes]]:
    """The batch as landing files: ``{date: (file name, bytes)}``, one file per annotation date with records.

    Records whose ``created_at`` was corrupted still go to their pair's date. ``fmt`` is ``"jsonl"``,
    ``"jsonl.gz"`` (gzip with mtime 0, so byte-reproducible) or ``"parquet"`` (via polars, schema dtypes).
    """
    if fmt not in _LANDING_FORMATS:
        raise ValueError(f"fmt must be one of {_LANDING_FORMATS}, got {fmt!r}")
    if len(batch.record_dates) != len(batch.records):
        raise ValueError("batch.record_dates must be parallel to batch.records")
    by_date: dict[str, list[dict]] = {}
    for rec, day in zip(batch.records, batch.record_dates):
        by_date.setdefault(day, []).append(rec)
    files: dict[str, tuple[str, bytes]] = {}
    for day in sorted(by_date):
        recs = by_date[day]
        if fmt == "jsonl":
            data = _jsonl_bytes(recs)
        elif fmt == "jsonl.gz":
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
                gz.write(_jsonl_bytes(recs))
            data = buf.getvalue()
        else:
            buf = io.BytesIO()
            _records_frame(recs).write_parquet(buf)
            data = buf.getvalue()
        files[day] = (f"{batch.batch_id}.{fmt}", data)
    return files


def write_landing(batch: SimulatedBatch, root_dir: str | os.PathLike, *, fmt: str = "jsonl") -> list[Path]:
    """Write the batch into ``<root_dir>/landing/comparisons/date=YYYY-MM-DD/<batch_id>.<fmt>`` (local disk).

    Returns the paths written, in date order. See :func:`landing_files` for the formats.
    """
    paths: list[Path] = []
    for day, (name, data) in landing_files(batch, fmt=fmt).items():
        folder = Path(root_dir) / "landing" / "comparisons" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def agreement_by_annotator(batch: SimulatedBatch) -> dict[str, dict[str, float]]:
    """Empirical behaviour per annotator over the clean records: ``n``, ``tie_rate``, ``first_rate`` (share of
    non-tie answers picking response_a) and ``accuracy`` (share of non-tie answers agreeing with the truth)."""
    stats: dict[str, Counter] = {}
    for rec, kind in zip(batch.records, batch.bad_kinds):
        if kind is not None:
            continue
        c = stats.setdefault(rec["annotator_id"], Counter())
        c["n"] += 1
        if rec["label"] == "tie":
            c["tie"] += 1
            continue
        c["decided"] += 1
        c["first"] += rec["label"] == "a"
        canonical = is_canonical_order(rec["response_a"], rec["response_b"])
        lab = rec["label"] if canonical else ("b" if rec["label"] == "a" else "a")
        c["correct"] += lab == batch.truth[pair_id(rec["prompt"], rec["response_a"], rec["response_b"])]
    out = {}
    for ann, c in stats.items():
        d = c["decided"]
        out[ann] = {
            "n": float(c["n"]),
            "tie_rate": c["tie"] / c["n"],
            "first_rate": c["first"] / d if d else math.nan,
            "accuracy": c["correct"] / d if d else math.nan,
        }
    return out
