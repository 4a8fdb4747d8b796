"""Calibrate a release's reward model on its own dataset splits and report how it agrees with humans.

Pairs are scored in their canonical orientation (response_a, response_b): margin = r(A) − r(B), y = 1 when the
aggregated label is A (0.5 for ties kept with target 0.5), so both classes occur and AUC / ECE are meaningful.
The method is chosen by cross-validation on the validation split; the test split is only measured. Every gated
quantity (test accuracy, calibrated ECE, human correlation) carries a seeded bootstrap interval whose resamples,
confidence and seed come from :class:`rlhf_assets.evaluation.thresholds.ReleaseThresholds`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import polars as pl
from pydantic import Field

from rlhf_assets.config_schema import settings
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.references import CalibrationRef
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import load_reward_model
from rlhf_assets.reward.calibration import N_FOLDS, fit_and_select
from rlhf_assets.reward.calibration_diagnostics import (
    agreement_level,
    human_correlation,
    length_bucket,
    metric_intervals,
    reliability_diagram_png,
    slice_accuracy,
)
from rlhf_assets.reward.evaluate import score_pairs
from rlhf_assets.reward.metrics import margin_probability
from rlhf_assets.storage import Storage


@settings
class CalibrationSettings:
    """How to calibrate (not what to accept: the limits are the release_thresholds resource's)."""

    batch_size: Annotated[int, Field(ge=1)] = 64
    """Pairs per scoring batch."""
    n_folds: Annotated[int, Field(ge=2)] = N_FOLDS
    """K of the cross-validation on the validation split that chooses Platt or isotonic (ties → Platt)."""
    fold_seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the cross-validation folds."""


#: The report's measured keys besides the intervals (all None when the scores are not finite).
MEASURED = ("method", "cv_log_loss", "accuracy", "auc", "ece_before", "ece_after", "brier_before", "brier_after",
            "log_loss_before", "log_loss_after")


@dataclass
class ReleaseCalibration:
    ref: CalibrationRef  # the asset's stored value: calibrator, report, correlation, slices
    report: dict[str, Any]
    reliability_png: bytes | None  # None when nothing could be measured
    nan_scores: int  # non-finite scores (NaN or ±inf) over the validation and test splits


def split_margins(scorer, table: pl.DataFrame, split: str, batch_size: int):
    rows = table.filter(pl.col("split") == split)
    pairs = [{"prompt": p, "chosen": a, "rejected": b}
             for p, a, b in rows.select("prompt", "response_a", "response_b").iter_rows()]
    margin = score_pairs(scorer, pairs, batch_size=batch_size) if pairs else np.zeros(0)
    y = rows.select(pl.when(pl.col("label") == "a").then(1.0).when(pl.col("label") == "b").then(0.0)
                    .otherwise(0.5))[:, 0].to_numpy()
    return np.asarray(margin, dtype=np.float64), y, rows


def store_calibration(storage: Storage, reward_model_id: str, calibrator: dict, report: dict) -> str:
    """The calibrator as its own small content-addressed artifact (kind ``calibration``, parent = the reward
    model), so a deployment can pin it by id like the models."""
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="rlhf-calibration-") as tmp:
        (Path(tmp) / "calibration.json").write_text(json.dumps({"calibrator": calibrator}, indent=2, sort_keys=True))
        ref = ArtifactStore(storage).put_dir(tmp, kind="calibration", manifest={
            "parent_ids": [reward_model_id], "method": calibrator.get("method"), "report": report})
    return ref.id


def calibrate_release(storage: Storage, artifact_id: str, dataset: pl.DataFrame,
                      settings: CalibrationSettings | None = None,
                      thresholds: ReleaseThresholds | None = None, *, dataset_id: str = "") -> ReleaseCalibration:
    """Score the validation and test splits, calibrate and measure.

    A reward model that gives any pair a non-finite score is not calibrated at all: its accuracy and ECE are left
    unmeasured (None, with a ``reason``) rather than measured on the pairs it happened to score, so every gate on
    them fails closed.
    """
    settings = settings or CalibrationSettings()
    thresholds = thresholds or ReleaseThresholds()
    boot = {"n_boot": thresholds.n_bootstrap, "seed": thresholds.seed, "confidence": thresholds.confidence}
    scorer = load_reward_model(ArtifactStore(storage).get(artifact_id))
    val_m, val_y, _ = split_margins(scorer, dataset, "validation", settings.batch_size)
    test_m, test_y, test_rows = split_margins(scorer, dataset, "test", settings.batch_size)
    nan_scores = int((~np.isfinite(val_m)).sum() + (~np.isfinite(test_m)).sum())
    base = {"n_validation": int(val_m.size), "n_test": int(test_m.size), "nan_scores": nan_scores,
            "n_folds": settings.n_folds, "fold_seed": settings.fold_seed, "n_bootstrap": thresholds.n_bootstrap,
            "confidence": thresholds.confidence, "bootstrap_seed": thresholds.seed}
    record = {"reward_model_id": artifact_id, "dataset_id": dataset_id, "settings": dataclasses.asdict(settings)}
    if nan_scores:
        report = base | dict.fromkeys(MEASURED, None) | {
            "accuracy_ci": [None, None], "ece_after_debiased": None, "ece_after_ci": [None, None],
            "reason": f"{nan_scores} non-finite reward-model score(s): not calibrated, not measured"}
        record |= {"calibration_artifact_id": None, "calibrator": None, "report": report, "calibration": None,
                   "human_correlation": None, "slices": []}
        return ReleaseCalibration(ref=CalibrationRef(**record), report=report, reliability_png=None,
                                  nan_scores=nan_scores)

    calibration = fit_and_select(val_m, val_y, test_m, test_y, n_folds=settings.n_folds, seed=settings.fold_seed)
    p_after = calibration.predict(test_m)
    intervals = metric_intervals(p_after, test_y, **boot)
    share_a = test_rows["share_a"].to_numpy()
    lengths = (test_rows["response_a"].str.len_chars() + test_rows["response_b"].str.len_chars()).to_numpy() / 2
    correlation = human_correlation(p_after, share_a, **boot)
    slices = slice_accuracy(p_after, test_y, {
        "agreement_level": agreement_level(share_a),
        "response_length": length_bucket(lengths),
    })
    full = calibration.to_dict()
    report = base | {
        "method": calibration.method,
        "cv_log_loss": full["cv_log_loss"],
        "accuracy": calibration.after["accuracy"],
        "accuracy_ci": intervals["accuracy_ci"],
        "auc": calibration.after["auc"],
        "ece_before": calibration.ece_before,
        "ece_after": calibration.ece_after,
        "ece_after_debiased": intervals["ece_debiased"],  # what the check and the gate act on, with its interval
        "ece_after_ci": intervals["ece_ci"],
        "brier_before": calibration.before["brier"],
        "brier_after": calibration.after["brier"],
        "log_loss_before": calibration.before["log_loss"],
        "log_loss_after": calibration.after["log_loss"],
        "reason": None,
    }
    report = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in report.items()}
    png = reliability_diagram_png(margin_probability(test_m), p_after, test_y)
    calibration_id = store_calibration(storage, artifact_id, full["calibrator"], report)
    record |= {"calibration_artifact_id": calibration_id, "calibrator": full["calibrator"], "report": report,
               "calibration": full, "human_correlation": correlation, "slices": slices}
    return ReleaseCalibration(ref=CalibrationRef(**record), report=report, reliability_png=png, nan_scores=nan_scores)
