"""Every knob of the automation (the sensors' thresholds, windows and cooldowns), declared once; the Dagster
``automation`` resource is generated from it (with the drift statistics' own DriftSettings beside it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

Share = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]


@settings
class AutomationSettings(FileConfig):
    """What the sensors watch for and how they act."""

    # what an alarm does ------------------------------------------------------------------------------------------
    retrain_cooldown_s: Annotated[float, Field(ge=0)] = 6 * 3600.0
    """After a retrain is requested, no other retrain for this long (one episode, one release)."""

    drift_reference_windows: PositiveInt = 4
    """A version's first windows of served traffic that become its production drift reference (not checked)."""

    # human–RM correlation (audits joined with what the service scored) --------------------------------------------
    audit_window: PositiveInt = 200
    """Audited pairs in the sliding window (the newest ones) the correlation is measured on."""
    min_audits: PositiveInt = 30
    """Audited pairs needed before the correlation is measured at all."""
    min_human_rm_correlation: Annotated[float, Field(ge=-1, le=1)] = 0.3
    """Retrain when the upper bound of Spearman(human preference, calibrated P(a ≻ b))'s interval falls below this."""
    max_correlation_drop: Annotated[float, Field(ge=0, le=2)] = 0.2
    """…or when it is this far below the release's own calibration baseline (its test-split Spearman)."""
    rollback_correlation: Annotated[float, Field(ge=-1, le=1)] = 0.1
    """After a promotion: roll production back to the previous release when the upper bound falls below this."""
    n_boot: Annotated[int, Field(ge=100)] = 1000
    """Bootstrap resamples of the correlation's interval."""
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    """Two-sided confidence of the interval."""

    # canary graduation --------------------------------------------------------------------------------------------
    canary_min_audits: PositiveInt = 30
    """Audited pairs the canary must have served before its live evidence can graduate it or end it."""
    canary_min_windows: Annotated[int, Field(ge=0)] = 1
    """Drift windows of the canary's own traffic that must have been checked without an alarm before it graduates."""

    # the served policy's runtime guard (policy_guard_sensor, reading `rlhf serve-policy`'s log) -------------------
    policy_guard_window: PositiveInt = 200
    """A release's newest served responses (in its current alias) the live guard figures are measured on."""
    policy_guard_min_responses: PositiveInt = 30
    """Responses a release must have served in its alias before its live guard figures can escalate it."""
    max_guarded_share: Share = 0.2
    """Allowed divergence: escalate (and move out of canary/production) when more of its responses were guarded."""
    max_live_mean_kl: Annotated[float, Field(gt=0)] = 10.0
    """Allowed divergence of a release whose ppo_policy records no KL limit: escalate when its live mean
    log-likelihood ratio to its reference exceeds this (nats). A release with one is held to the limit its release
    gate held it to (measured_kl.limit: its PPO budget, or the tighter release threshold)."""

    # annotator disagreement ---------------------------------------------------------------------------------------
    max_kappa_drop: Share = 0.1
    """Alert when a day's Fleiss' kappa is this far below the mean of the days before it."""
    max_accuracy_drop: Share = 0.15
    """Flag an annotator whose estimated accuracy on a day is this far below their own history."""
    min_annotator_labels: PositiveInt = 20
    """Labels an annotator needs on the day (and in their history) to be judged."""
    min_history_days: PositiveInt = 2
    """Earlier aggregated days needed before a day is compared with them."""
