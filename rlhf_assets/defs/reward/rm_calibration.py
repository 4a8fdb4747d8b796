import base64

import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.reward.calibrate_release import CalibrationSettings, calibrate_release


class CalibrationConfig(dg.Config):
    min_test_accuracy: float = CalibrationSettings.min_test_accuracy
    """Blocking: the reward model's test-split accuracy must reach this."""
    max_calibrated_ece: float = CalibrationSettings.max_calibrated_ece
    """Blocking: expected calibration error (15 bins) after calibration must not exceed this."""
    n_bootstrap: int = CalibrationSettings.n_bootstrap
    batch_size: int = CalibrationSettings.batch_size


@dg.asset(
    partitions_def=release_partitions,
    group_name="reward",
    kinds={"scikitlearn"},
    io_manager_key="table_io_manager",
    check_specs=[
        dg.AssetCheckSpec("test_accuracy", asset="rm_calibration", blocking=True),
        dg.AssetCheckSpec("calibrated_ece", asset="rm_calibration", blocking=True),
        dg.AssetCheckSpec("no_nan_scores", asset="rm_calibration", blocking=True),
    ],
)
def rm_calibration(
    context: dg.AssetExecutionContext,
    config: CalibrationConfig,
    storage: StorageResource,
    reward_model: dict,
    preference_dataset: pl.DataFrame,
):
    """Platt and isotonic calibration of the reward model's score margin, fitted on the validation split and chosen
    by test-split log-loss; accuracy, AUC, ECE, Brier and correlation with human agreement on the test split."""
    settings = CalibrationSettings(**config.model_dump())
    result = calibrate_release(storage.storage(), reward_model["artifact_id"], preference_dataset, settings)
    report = result.report
    image = base64.b64encode(result.reliability_png).decode()
    yield dg.Output(
        result.record,
        metadata={
            "artifact_id": reward_model["artifact_id"],
            "method": report["method"],
            "test_accuracy": report["accuracy"],
            "test_auc": report["auc"],
            "ece_before": report["ece_before"],
            "ece_after": report["ece_after"],
            "brier_after": report["brier_after"],
            "log_loss_after": report["log_loss_after"],
            "human_correlation": dg.MetadataValue.json(result.record["human_correlation"]),
            "slices": dg.MetadataValue.json(result.record["slices"]),
            "reliability_diagram": dg.MetadataValue.md(f"![reliability diagram](data:image/png;base64,{image})"),
        },
    )
    yield dg.AssetCheckResult(check_name="test_accuracy", passed=bool(report["accuracy"] >= settings.min_test_accuracy),
                              metadata={"value": report["accuracy"], "threshold": settings.min_test_accuracy})
    ece = report["ece_after"]
    yield dg.AssetCheckResult(check_name="calibrated_ece", passed=bool(ece is not None and ece <= settings.max_calibrated_ece),
                              metadata={"value": ece, "threshold": settings.max_calibrated_ece})
    yield dg.AssetCheckResult(check_name="no_nan_scores", passed=result.nan_scores == 0,
                              metadata={"nan_scores": result.nan_scores})
