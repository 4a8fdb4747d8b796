import dagster as dg

from rlhf_assets.defs.check_names import CALIBRATED_ECE, NO_NAN_SCORES, TEST_ACCURACY
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, interval, mapping_table, md_image, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import ReleaseThresholdsResource, StorageResource
from rlhf_assets.evaluation.evidence import FAIL, INCONCLUSIVE, NOT_MEASURED, PASS, outcome
from rlhf_assets.references import DatasetTable, ModelRef
from rlhf_assets.reward.calibrate_release import CalibrationSettings, calibrate_release

CalibrationConfig = config_class("CalibrationConfig", CalibrationSettings)


def interval_check(check_name: str, value, ci: list, threshold: float, comparison: str) -> dg.AssetCheckResult:
    """Fails only on evidence: the whole interval on the wrong side, or nothing measured (fail closed)."""
    low, high = ci if ci else (None, None)
    verdict = outcome(low, high, threshold, comparison)
    return dg.AssetCheckResult(
        check_name=check_name, passed=verdict in (PASS, INCONCLUSIVE),
        description={PASS: f"interval {comparison} {threshold}",
                     FAIL: f"interval wholly fails {comparison} {threshold}",
                     INCONCLUSIVE: f"interval straddles {threshold}: not evidence of a failure",
                     NOT_MEASURED: "not measured (fails closed)"}[verdict],
        metadata=display({"value": value, "ci_low": low, "ci_high": high, "threshold": threshold,
                          "outcome": verdict}))


def _correlation_table(correlation: dict | None) -> dg.TableMetadataValue:
    """Spearman and Pearson correlation of the calibrated preference with the human agreement share, with their
    bootstrap intervals and the number of test pairs (``reason`` when it could not be measured)."""
    c = correlation or {}
    return table([{"statistic": name, "value": c.get(name), "ci_low": c.get(f"{name}_ci_low"),
                   "ci_high": c.get(f"{name}_ci_high"), "n": c.get("n"), "note": c.get("reason") or ""}
                  for name in ("spearman", "pearson")], ["statistic", "value", "ci_low", "ci_high", "n", "note"])


@dg.asset(
    partitions_def=release_partitions,
    group_name="reward",
    kinds={"scikitlearn"},
    owners=OWNERS,
    check_specs=[
        dg.AssetCheckSpec(TEST_ACCURACY, asset="rm_calibration", blocking=True, partitions_def=release_partitions,
                          description="Test-split accuracy ≥ release_thresholds.min_rm_test_accuracy; fails only "
                                      "when its whole bootstrap interval is below (or nothing was measured)."),
        dg.AssetCheckSpec(CALIBRATED_ECE, asset="rm_calibration", blocking=True, partitions_def=release_partitions,
                          description="Bias-corrected calibrated ECE ≤ release_thresholds.max_calibrated_ece; fails "
                                      "only when its whole bootstrap interval is above (or nothing was measured)."),
        dg.AssetCheckSpec(NO_NAN_SCORES, asset="rm_calibration", blocking=True, partitions_def=release_partitions,
                          description="Every validation and test score of the reward model is finite."),
    ],
)
def rm_calibration(
    context: dg.AssetExecutionContext,
    config: CalibrationConfig,
    storage: StorageResource,
    release_thresholds: ReleaseThresholdsResource,
    reward_model: ModelRef,
    preference_dataset: DatasetTable,
):
    """Platt or isotonic calibration of the reward model's score margin, chosen by K-fold cross-validated log-loss
    on the validation split and fitted on all of it; accuracy, AUC, ECE, Brier and correlation with human agreement
    measured on the test split only, the gated ones with bootstrap intervals. The blocking checks fail when an
    interval lies wholly on the wrong side of its release threshold, when nothing was measured, or on any
    non-finite reward-model score."""
    thresholds = release_thresholds.thresholds()
    result = calibrate_release(storage.storage(), reward_model.artifact_id, preference_dataset.table,
                               settings_from(config, CalibrationSettings), thresholds,
                               dataset_id=preference_dataset.dataset_id)
    report, ref = result.report, result.ref
    metadata = {
        "artifact_id": reward_model.artifact_id,
        "method": report["method"],
        "cv_log_loss": mapping_table(report["cv_log_loss"] or {}, "method", "mean held-out log-loss"),
        "test_accuracy": report["accuracy"],
        "test_accuracy_ci": interval(*(report["accuracy_ci"] or (None, None))),
        "test_auc": report["auc"],
        "ece_before": report["ece_before"],
        "ece_after": report["ece_after"],
        "ece_after_debiased": report["ece_after_debiased"],
        "ece_after_ci": interval(*(report["ece_after_ci"] or (None, None))),
        "brier_after": report["brier_after"],
        "log_loss_after": report["log_loss_after"],
        "nan_scores": result.nan_scores,
        "human_correlation": _correlation_table(ref.human_correlation),
        "slices": table(ref.slices, ["slicing", "value", "n", "share", "accuracy"]),
    }
    if report["reason"]:
        context.log.warning(f"rm_calibration: {report['reason']}")
        metadata["reason"] = report["reason"]
    if result.reliability_png is not None:
        metadata["reliability_diagram"] = md_image(result.reliability_png, "reliability diagram")
    yield dg.Output(ref, metadata=display(metadata))
    yield interval_check(TEST_ACCURACY, report["accuracy"], report["accuracy_ci"], thresholds.min_rm_test_accuracy,
                         ">=")
    yield interval_check(CALIBRATED_ECE, report["ece_after_debiased"], report["ece_after_ci"], thresholds.max_calibrated_ece,
                         "<=")
    yield dg.AssetCheckResult(check_name=NO_NAN_SCORES, passed=result.nan_scores == 0,
                              description=f"{result.nan_scores} non-finite score(s)",
                              metadata={"nan_scores": result.nan_scores})
