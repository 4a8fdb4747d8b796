"""The day's work queue of pairs (what the ``annotation_queue`` asset writes with queue.write_queue).

Three kinds of work, each assignment one (item, annotator):

1. **Dynamic overlap** (round 1, 2, …): a pair queued on an earlier day that everyone asked has answered (or
   skipped, in the app) but whose aggregated posterior confidence is still under ``target_confidence`` — or that
   has fewer than ``overlap_k`` answers because of skips — is asked of one more annotator, until ``overlap_cap``
   annotators have been asked. An item still waiting for an answer it was asked for is not asked again, so a slow
   annotator does not trigger extra work. The confidence is Dawid–Skene's (the
   aggregation's settings) over every answer of the window: aggregated_labels is per answer day, and an item's
   answers may fall on several days.
2. **New pairs** (round 0): each asked of ``overlap_k`` distinct annotators.
3. **Quality control**: gold pairs and attention checks (annotation/qc_pool.py) at ``qc_rate`` of each annotator's
   assignments, never an item the annotator was given before.

Assignments go to the least-loaded annotators (today's load; ties broken by a seeded draw), never the same
annotator twice on one item (over every earlier day too). The rows are shuffled so quality-control items sit among
the work. Assignment ids are a hash of (day, annotator, item): a rematerialized queue keeps its ids, so answers
already given to it still match.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.annotation.queue import ASSIGNMENT_SCHEMA, QC_KINDS
from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.preference.labels import AggregationSettings, aggregate_comparisons
from rlhf_assets.preference.schema import pair_id

PAIR_COLUMNS = ("prompt", "response_a", "response_b", "policy_a", "policy_b", "temperature")


@dataclass
class QueueBuild:
    assignments: pl.DataFrame  # ASSIGNMENT_SCHEMA
    summary: dict[str, Any] = field(default_factory=dict)


def assignment_id(day: str, annotator_id: str, item_id: str) -> str:
    return "q-" + hashlib.sha256(f"{day}\x00{annotator_id}\x00{item_id}".encode()).hexdigest()[:24]


def day_rng(seed: int, day: str, purpose: str) -> random.Random:
    return random.Random(f"{seed}/{day}/{purpose}")


def with_item_ids(pairs: pl.DataFrame) -> pl.DataFrame:
    """New pairs (PAIR_COLUMNS; policy ids and temperature optional) with their item_id, the pair id."""
    pairs = pairs.with_columns([pl.lit(None, ASSIGNMENT_SCHEMA[c]).alias(c) for c in PAIR_COLUMNS
                                if c not in pairs.columns])
    ids = [pair_id(p, a, b) for p, a, b in zip(pairs["prompt"], pairs["response_a"], pairs["response_b"])]
    return pairs.select(list(PAIR_COLUMNS)).cast({c: ASSIGNMENT_SCHEMA[c] for c in PAIR_COLUMNS}).with_columns(
        pl.Series("item_id", ids, dtype=pl.String)).unique("item_id", keep="first", maintain_order=True)


def overlap_candidates(earlier: pl.DataFrame, answers: pl.DataFrame, settings: AnnotationSettings,
                       aggregation: AggregationSettings | None = None, flagged: dict[str, dict] | None = None,
                       skipped: frozenset[str] | set[str] = frozenset()) -> pl.DataFrame:
    """Pairs queued before that need one more annotator (see the module docstring): one row per item with
    ``asked`` (annotators asked so far), ``answered``, ``skipped`` and ``confidence`` (null without answers); most
    uncertain first. ``skipped``: assignment ids the annotators skipped (the app's annotation/skips/)."""
    pairs = earlier.filter(pl.col("item_kind") == "pair")
    columns = {"item_id": pl.String, "asked": pl.UInt32, "answered": pl.UInt32, "skipped": pl.UInt32,
               "confidence": pl.Float64}
    if pairs.height == 0:
        return pl.DataFrame(schema=columns)
    asked = pairs.group_by("item_id").agg(
        pl.col("annotator_id").n_unique().alias("asked"),
        pl.col("annotator_id").filter(pl.col("assignment_id").is_in(list(skipped))).n_unique().alias("skipped"))
    pair_answers = answers.filter(pl.col("pair_id").is_in(asked["item_id"].implode())) if answers.height else answers
    if "item_kind" in pair_answers.columns:
        pair_answers = pair_answers.filter(~pl.col("item_kind").is_in(QC_KINDS).fill_null(False))
    if pair_answers.height:
        answered = pair_answers.group_by("pair_id").agg(pl.col("annotator_id").n_unique().alias("answered"))
        labels = aggregate_comparisons(pair_answers, aggregation or AggregationSettings(), flagged).labels
        labels = labels.select("pair_id", "confidence")
    else:
        answered = pl.DataFrame(schema={"pair_id": pl.String, "answered": pl.UInt32})
        labels = pl.DataFrame(schema={"pair_id": pl.String, "confidence": pl.Float64})
    state = (asked.join(answered, left_on="item_id", right_on="pair_id", how="left")
             .join(labels.rename({"pair_id": "item_id"}), on="item_id", how="left")
             .with_columns(pl.col("answered").fill_null(0)))
    # everyone asked has answered or skipped; then too few answers (a skip) or still unsure → one more annotator
    responded = (pl.col("answered") + pl.col("skipped")) >= pl.col("asked")
    unsure = (pl.col("answered") < settings.overlap_k) | (pl.col("confidence").fill_null(0.0)
                                                           < settings.target_confidence)
    return (state.filter(responded & unsure & (pl.col("asked") < settings.overlap_cap))
            .sort([pl.col("confidence").fill_null(0.0), "item_id"]).select(list(columns)).cast(columns))


class _Balancer:
    """Today's load per annotator; picks the least-loaded eligible annotators (ties by a seeded random order)."""

    def __init__(self, annotators: list[str], rng: random.Random):
        self.load = {a: 0 for a in annotators}
        self.tiebreak = {a: rng.random() for a in annotators}

    def pick(self, n: int, exclude: set[str]) -> list[str]:
        eligible = sorted((a for a in self.load if a not in exclude), key=lambda a: (self.load[a], self.tiebreak[a]))
        chosen = eligible[:n]
        for a in chosen:
            self.load[a] += 1
        return chosen


def build_queue(day: str, *, new_pairs: pl.DataFrame, earlier: pl.DataFrame, answers: pl.DataFrame,
                annotators: list[str], qc_pool: pl.DataFrame, settings: AnnotationSettings,
                aggregation: AggregationSettings | None = None, flagged: dict[str, dict] | None = None,
                skipped: frozenset[str] | set[str] = frozenset(),
                texts: Callable[[list[str]], pl.DataFrame] | None = None) -> QueueBuild:
    """The day's assignments. ``new_pairs``: candidate new pairs (PAIR_COLUMNS), at most ``pairs_per_day`` of them
    not queued before are used; ``earlier``: every assignment of the days before (ASSIGNMENT_SCHEMA; without the
    texts when ``texts`` is given: assignment_id, annotator_id, item_id and item_kind are enough); ``answers``:
    the validated comparisons of the quality window; ``qc_pool``: annotation/qc_pool.py's pool; ``skipped``: the
    assignment ids annotators skipped; ``texts``: item_id and PAIR_COLUMNS of the earlier pairs it is given the ids
    of, as first queued (queue_index.queued_texts; default: from ``earlier``)."""
    if not annotators:
        raise ValueError("no annotators to queue for: add them to the roster (`rlhf annotate roster add NAME`) or "
                         "list them in the config's `annotators`")
    if len(set(annotators)) != len(annotators):
        raise ValueError("annotators must be distinct")
    balancer = _Balancer(sorted(annotators), day_rng(settings.seed, day, "balance"))
    seen: dict[str, set[str]] = {}  # item → annotators ever given it (earlier days and today)
    for item, annotator in zip(earlier["item_id"], earlier["annotator_id"]):
        seen.setdefault(item, set()).add(annotator)
    rows: list[dict[str, Any]] = []
    short: list[dict[str, Any]] = []

    def add(item: dict[str, Any], kind: str, round_: int, who: list[str]) -> None:
        for annotator in who:
            seen.setdefault(item["item_id"], set()).add(annotator)
            rows.append({**{c: item.get(c) for c in PAIR_COLUMNS}, "assignment_id": assignment_id(
                day, annotator, item["item_id"]), "day": day, "annotator_id": annotator, "item_id": item["item_id"],
                "item_kind": kind, "round": round_, "batch_id": f"queue-{day}",
                "expected_label": item.get("expected_label")})

    # 1. dynamic overlap
    requeue = overlap_candidates(earlier, answers, settings, aggregation, flagged, skipped)
    content = (texts(requeue["item_id"].to_list()) if texts is not None else
               earlier.filter(pl.col("item_kind") == "pair").unique("item_id", keep="first")
               .select("item_id", *PAIR_COLUMNS))
    requeued = []
    for r in requeue.join(content, on="item_id", how="left").iter_rows(named=True):
        who = balancer.pick(1, seen.get(r["item_id"], set()))
        if not who:
            short.append({"item_id": r["item_id"], "round": r["asked"] - settings.overlap_k + 1, "missing": 1})
            continue
        add(r, "pair", r["asked"] - settings.overlap_k + 1, who)
        requeued.append({"item_id": r["item_id"], "asked_before": int(r["asked"]), "answered": int(r["answered"]),
                         "skipped": int(r["skipped"]),
                         "confidence": None if r["confidence"] is None else round(float(r["confidence"]), 4),
                         "to": who[0]})

    # 2. new pairs, not queued before
    fresh = with_item_ids(new_pairs) if new_pairs.height else pl.DataFrame()
    if fresh.height:
        fresh = fresh.filter(~pl.col("item_id").is_in(list(seen))).head(settings.pairs_per_day)
    for r in fresh.iter_rows(named=True):
        who = balancer.pick(settings.overlap_k, seen.get(r["item_id"], set()))
        add(r, "pair", 0, who)
        if len(who) < settings.overlap_k:
            short.append({"item_id": r["item_id"], "round": 0, "missing": settings.overlap_k - len(who)})

    # 3. quality control at qc_rate of each annotator's assignments
    qc_rng = day_rng(settings.seed, day, "qc")
    qc_short = 0
    by_kind = {k: qc_pool.filter(pl.col("item_kind") == k).to_dicts() for k in QC_KINDS}
    work = dict(balancer.load)
    for annotator in sorted(work):
        expected = settings.qc_rate / (1 - settings.qc_rate) * work[annotator]  # QC share of all their rows = qc_rate
        n_qc = int(expected) + (qc_rng.random() < expected - int(expected))
        for _ in range(n_qc):
            first = "attention" if qc_rng.random() < settings.attention_share else "gold"
            for kind in (first, "gold" if first == "attention" else "attention"):
                unseen = [q for q in by_kind[kind] if annotator not in seen.get(q["item_id"], set())]
                if unseen:
                    add(qc_rng.choice(unseen), kind, 0, [annotator])
                    balancer.load[annotator] += 1
                    break
            else:
                qc_short += 1

    frame = pl.DataFrame(rows, schema={c: ASSIGNMENT_SCHEMA[c] for c in ASSIGNMENT_SCHEMA if c != "priority"})
    order = np.random.default_rng(day_rng(settings.seed, day, "order").getrandbits(64)).permutation(frame.height)
    frame = frame[order].with_columns(pl.lit(None, pl.Float64).alias("priority"))
    return QueueBuild(frame, summarize(frame, requeued, short, qc_short, balancer.load))


def summarize(frame: pl.DataFrame, requeued: list[dict], short: list[dict], qc_short: int,
              loads: dict[str, int]) -> dict[str, Any]:
    counts = frame.group_by("item_kind", "round").len().sort("item_kind", "round")
    return {
        "assignments": frame.height,
        "items": frame["item_id"].n_unique() if frame.height else 0,
        "by_kind_and_round": {f"{r['item_kind']} round {r['round']}": r["len"] for r in counts.iter_rows(named=True)},
        "by_kind": {k: int((frame["item_kind"] == k).sum()) for k in ("pair", *QC_KINDS)},
        "requeued": requeued,
        "short": short,  # items that got fewer annotators than asked for (too few eligible annotators)
        "qc_pool_exhausted": qc_short,  # quality-control items not given: the annotator had seen the whole pool
        "loads": dict(sorted(loads.items())),
    }


@dataclass
class QueueDay:
    build: QueueBuild
    source: str              # where the new pairs came from
    note: str
    quality: pl.DataFrame    # annotation/quality.py's review of the window's answers
    new_flags: dict[str, dict]
    window: tuple[str, str]
    path: str
    sha256: str


def window_days(day: str, settings: AnnotationSettings) -> tuple[str, str]:
    """(first, last) day of the answers the queue of ``day`` reads: the quality_window_days before it."""
    from datetime import date, timedelta

    d = date.fromisoformat(day)
    return (d - timedelta(days=settings.quality_window_days)).isoformat(), (d - timedelta(days=1)).isoformat()


def queue_day(storage: Any, day: str, settings: AnnotationSettings, answers: pl.DataFrame,
              aggregation: AggregationSettings | None = None) -> QueueDay:
    """Everything annotation_queue does for ``day``: review the window's quality-control answers and flag (the
    flagged list, automation/annotators.py), pick the new pairs (annotation/pair_sources.py), build the queue and
    write it (queue.write_queue). ``answers``: the validated comparisons of :func:`window_days`."""
    from rlhf_assets.annotation.answers import SKIPS_DIR
    from rlhf_assets.annotation.pair_sources import new_pairs
    from rlhf_assets.annotation.qc_pool import load_pool
    from rlhf_assets.annotation.quality import flags_from, review_quality
    from rlhf_assets.annotation.queue import queue_path, write_queue
    from rlhf_assets.annotation.queue_index import earlier_assignments, queued_texts
    from rlhf_assets.annotation.roster import queue_annotators
    from rlhf_assets.automation.annotators import add_flags, read_flagged

    window = window_days(day, settings)
    quality = review_quality(answers, settings)
    before = read_flagged(storage)
    flags = {k: v for k, v in flags_from(quality, day, window).items() if k not in before}
    flagged = add_flags(storage, flags) if flags else before
    earlier = earlier_assignments(storage, day)  # what earlier days queued, from the incremental queue index
    annotators, annotators_from = queue_annotators(storage, settings.annotators)
    pool = load_pool(settings.qc_pool)
    pairs = new_pairs(storage, day, settings, exclude=set(earlier["item_id"].to_list()))
    skipped = {p.name.removesuffix(".json") for p in storage.list_files(storage.path(*SKIPS_DIR))}
    build = build_queue(day, new_pairs=pairs.pairs, earlier=earlier, answers=answers, annotators=annotators,
                        qc_pool=pool, settings=settings, aggregation=aggregation, flagged=flagged, skipped=skipped,
                        texts=lambda items: queued_texts(storage, earlier, items))
    build.summary["annotators_from"] = annotators_from
    digest = write_queue(storage, day, "pairs", build.assignments)
    return QueueDay(build, pairs.source, pairs.note, quality, flags, window, str(queue_path(storage, day, "pairs")),
                    digest)
