"""Calibrate a release's reward model on its own dataset splits and report how it agrees with humans.

Pairs are scored in their canonical orientation (response_a, response_b): margin = r(A) − r(B), y = 1 when the
aggregated label is A (0.5 for ties kept with target 0.5), so both classes occur and AUC / ECE are meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.calibration import (
    agreement_level,
    fit_and_select,
    human_correlation,
    length_bucket,
    reliability_diagram_png,
    slice_accuracy,
)
from rlhf_assets.reward.evaluate import load_reward_model, score_pairs
from rlhf_assets.reward.metrics import margin_probability
from rlhf_assets.storage import Storage


@dataclass(frozen=True)
class CalibrationSettings:
    min_test_accuracy: float = 0.6
    max_calibrated_ece: float = 0.05
    n_bootstrap: int = 1000
    batch_size: int = 64
    seed: int = 0


@dataclass
class ReleaseCalibration:
    record: dict[str, Any]  # JSON: calibrator, report, correlation, slices (the asset's stored value)
    report: dict[str, Any]
    reliability_png: bytes
    nan_scores: int


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
                      settings: CalibrationSettings | None = None) -> ReleaseCalibration:
    settings = settings or CalibrationSettings()
    scorer = load_reward_model(ArtifactStore(storage).get(artifact_id))
    val_m, val_y, _ = split_margins(scorer, dataset, "validation", settings.batch_size)
    test_m, test_y, test_rows = split_margins(scorer, dataset, "test", settings.batch_size)
    nan_scores = int((~np.isfinite(val_m)).sum() + (~np.isfinite(test_m)).sum())
    val_ok, test_ok = np.isfinite(val_m), np.isfinite(test_m)
    calibration = fit_and_select(val_m[val_ok], val_y[val_ok], test_m[test_ok], test_y[test_ok])
    p_after = calibration.predict(test_m[test_ok])
    share_a = test_rows["share_a"].to_numpy()[test_ok]
    lengths = (test_rows["response_a"].str.len_chars() + test_rows["response_b"].str.len_chars()).to_numpy() / 2
    correlation = human_correlation(p_after, share_a, n_boot=settings.n_bootstrap, seed=settings.seed)
    slices = slice_accuracy(p_after, test_y[test_ok], {
        "agreement_level": agreement_level(share_a),
        "response_length": length_bucket(lengths[test_ok]),
    })
    full = calibration.to_dict()
    report = {
        "method": calibration.method,
        "accuracy": calibration.after["accuracy"],
        "auc": calibration.after["auc"],
        "ece_before": calibration.ece_before,
        "ece_after": calibration.ece_after,
        "brier_before": calibration.before["brier"],
        "brier_after": calibration.after["brier"],
        "log_loss_before": calibration.before["log_loss"],
        "log_loss_after": calibration.after["log_loss"],
        "n_validation": int(val_ok.sum()),
        "n_test": int(test_ok.sum()),
    }
    report = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in report.items()}
    png = reliability_diagram_png(margin_probability(test_m[test_ok]), p_after, test_y[test_ok])
    calibration_id = store_calibration(storage, artifact_id, full["calibrator"], report)
    record = {"artifact_id": artifact_id, "calibration_artifact_id": calibration_id,
              "calibrator": full["calibrator"], "report": report, "calibration": full,
              "human_correlation": correlation, "slices": slices, "settings": settings.__dict__}
    return ReleaseCalibration(record=record, report=report, reliability_png=png, nan_scores=nan_scores)
