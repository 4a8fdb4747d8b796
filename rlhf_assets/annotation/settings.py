"""Every knob of the annotation pillar, declared once per concern (``@settings``, rlhf_assets/config_schema.py):
the work queue and its quality control (AnnotationSettings), the app, the audit sampling. The Dagster config of
each asset is generated from these (rlhf_assets/defs/config_classes.py). No Dagster here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

Share = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]


@settings
class AnnotationSettings(FileConfig):
    """The daily work queue (annotation_queue): how many items, how many annotators each, how much quality
    control; and when an annotator's quality-control answers flag them."""

    CONFIG_LABEL = "annotation"

    # the queue ---------------------------------------------------------------------------------------------------
    pairs_per_day: PositiveInt = 40
    """New pairs queued per day (each asked of overlap_k annotators)."""
    overlap_k: PositiveInt = 3
    """Distinct annotators each new pair is asked of (agreement and Dawid–Skene need several per item)."""
    target_confidence: Annotated[float, Field(gt=0, le=1)] = 0.7
    """Dynamic overlap: a pair whose aggregated posterior confidence (aggregated_labels) is below this after it has
    all the answers it was asked for gets one more annotator the next day…"""
    overlap_cap: PositiveInt = 6
    """…up to this many annotators in all (never the same annotator twice on one item)."""
    qc_rate: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Share of each annotator's assignments that are quality-control items (gold pairs and attention checks)."""
    attention_share: Share = 0.5
    """Share of the quality-control items that are attention checks (the rest are gold pairs)."""
    qc_pool: str | None = None
    """A JSONL file of quality-control items ({"kind": "gold"|"attention", "prompt", "response_a", "response_b",
    "expected_label": "a"|"b"|"tie"}); unset: the pool bundled with the project (annotation/qc_pool.py)."""
    annotators: tuple[str, ...] = ()
    """Annotator ids to queue for when there is no roster (annotation/roster.py); with a roster, its active
    annotators are used and this is ignored."""
    max_new_tokens: PositiveInt | None = None
    """Release pairs: response tokens sampled from the production policy and its reference per prompt (unset: the
    policy's training config's)."""
    temperature: Annotated[float, Field(gt=0)] | None = None
    """Release pairs: sampling temperature of both responses (unset: the policy's training config's)."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the choice of prompts, the sampling, the quality-control mix and the load balancing' tie-breaks
    (the day is mixed in, so days differ and a rematerialization repeats itself)."""

    # quality control: who is flagged ----------------------------------------------------------------------------
    quality_window_days: PositiveInt = 14
    """Days of answers (ending on the asset's day) an annotator's gold accuracy and attention failures count over."""
    gold_accuracy_threshold: Share = 0.8
    """An annotator whose gold accuracy is below this (with at least min_gold_answers) is flagged."""
    min_gold_answers: PositiveInt = 5
    """Gold answers an annotator must have given before their gold accuracy can flag them."""
    attention_failures_to_flag: PositiveInt = 2
    """Failed attention checks (in the window) that flag an annotator; one slip does not."""

    def __post_init__(self) -> None:
        if self.overlap_cap < self.overlap_k:
            raise ValueError(f"overlap_cap ({self.overlap_cap}) must be at least overlap_k ({self.overlap_k})")
        if len(set(self.annotators)) != len(self.annotators):
            raise ValueError("annotators must be distinct")


@settings
class AuditSettings(FileConfig):
    """The daily audit sample (audit_queue): which served compared pairs humans judge for the human–RM correlation
    monitor, under a label budget, stratified by prompt cluster × score band with Neyman-style allocation toward
    strata whose model–human disagreement is uncertain or drifting (annotation/audit.py)."""

    CONFIG_LABEL = "audit"

    daily_label_budget: PositiveInt = 200
    """Human labels per day (pairs audited × annotators_per_pair)."""
    annotators_per_pair: PositiveInt = 1
    """Annotators each audited pair is asked of (the correlation monitor averages their labels)."""
    clusters: Annotated[int, Field(ge=1, le=64)] = 8
    """Prompt clusters: k-means (scikit-learn) on the logged 32-d prompt embeddings, fitted once and kept under
    annotation/audit/clusters.json so a cluster means the same region every day (delete the file to refit)."""
    score_bands: tuple[float, ...] = (0.6, 0.75)
    """Edges on the model's confidence max(p_a, 1 − p_a) that cut each cluster into score bands (near-ties first)."""
    floor: Annotated[int, Field(ge=0)] = 1
    """Pairs every non-empty stratum gets at least (when the budget allows; otherwise the highest-weight strata):
    every stratum stays watched and keeps an inclusion probability above 0. 24 strata × 2 would take half of a
    100-label budget (bench/audit_sampling.py)."""
    drift_boost: Annotated[float, Field(ge=0)] = 10.0
    """A stratum's allocation weight N·S is multiplied by 1 + drift_boost × its cluster's drift signal (0…1); 10 beat
    3 in bench/audit_sampling.py (detection 80% vs 67% at 100 labels a day)."""
    drift_z: Annotated[float, Field(gt=0)] = 3.0
    """Excess model–human disagreement (a z-score over the cluster's past audits) that counts as full drift (1)."""
    history_days: PositiveInt = 7
    """Days of past audits (before the queue's day) that estimate each cluster's disagreement and drift."""
    prior_strength: Annotated[float, Field(gt=0)] = 5.0
    """Expected disagreements the calibration prior (a calibrated model disagrees with humans 1 − max(p, 1 − p) of
    the time) counts as, against each cluster's observed ones."""
    auditors: tuple[str, ...] = ()
    """Annotator ids audits go to when there is no roster (annotation/roster.py); with a roster, its active
    annotators."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the k-means fit and of the draw inside each stratum (the day is mixed in)."""

    def __post_init__(self) -> None:
        edges = list(self.score_bands)
        if edges != sorted(set(edges)) or any(not 0.5 < e < 1 for e in edges):
            raise ValueError(f"score_bands must be increasing edges in (0.5, 1); got {self.score_bands}")
        if len(set(self.auditors)) != len(self.auditors):
            raise ValueError("auditors must be distinct")


@settings
class AppSettings(FileConfig):
    """The annotation app (``rlhf annotate``): where it listens, who may sign in, what an answer may hold and how
    answers are rotated into landing files (annotation/answers.py)."""

    CONFIG_LABEL = "annotate"

    host: str = "127.0.0.1"
    """Interface to bind (put a TLS-terminating proxy in front of anything but loopback)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8070
    """TCP port (0: any free port, printed at start)."""
    day: str | None = None
    """Queue day (YYYY-MM-DD) whose assignments are served; unset: today (UTC), re-read as the day changes."""
    token_expiry_days: Annotated[float, Field(gt=0)] = 30.0
    """`rlhf annotate roster add`: days a new token is valid (--expires-days overrides it per annotator)."""
    session_hours: Annotated[float, Field(gt=0)] = 12.0
    """A sign-in lasts this long (never past the token's expiry); sessions live in the app's memory only."""
    max_rationale_chars: Annotated[int, Field(ge=0)] = 1000
    """Longest rationale an answer may carry (a longer one is refused with 422; 0: no rationale)."""
    max_skip_reason_chars: PositiveInt = 300
    """Longest reason a skip may carry."""
    max_body_bytes: PositiveInt = 64 * 1024
    """Largest request body; a larger one is refused while it is being read (413)."""
    guidelines_dir: str | None = None
    """Folder of versioned guidelines (`v1.md`, `v2.md`, …); unset: the ones bundled with the package."""
    guidelines_version: str | None = None
    """Version shown and recorded with every answer (e.g. `v1`); unset: the highest in guidelines_dir."""
    rotate_answers: PositiveInt = 50
    """Stored answers waiting for the landing zone are rotated into one landing file when this many are waiting…"""
    rotate_seconds: Annotated[float, Field(gt=0)] = 300.0
    """…or when the oldest has waited this long (and always at shutdown)."""

    def __post_init__(self) -> None:
        if self.day is not None:
            from datetime import date

            try:
                date.fromisoformat(self.day)
            except ValueError:
                raise ValueError(f"day must be YYYY-MM-DD, got {self.day!r}") from None
