import dagster as dg
import polars as pl

from rlhf_assets.automation.drift_watch import reference_sample, store_reference
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import AutomationResource, StorageResource
from rlhf_assets.evaluation.drift import DriftInputError
from rlhf_assets.references import CalibrationRef, DatasetTable, DriftReferenceRef, ModelRef
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.serving.engine import ServedModel

HELD_OUT = ("validation", "judge", "test")  # pairs the proxy reward model never trained on


@dg.asset(partitions_def=release_partitions, group_name="reward", kinds={"scikitlearn", "scipy"},
          owners=["team:rlhf"])
def drift_reference(context: dg.AssetExecutionContext, storage: StorageResource, automation: AutomationResource,
                    preference_dataset: DatasetTable, reward_model: ModelRef,
                    rm_calibration: CalibrationRef) -> dg.Output[DriftReferenceRef]:
    """What this release's reward model says about its held-out pairs (validation, judge and test splits), served
    exactly as `rlhf serve` serves it: the scores of both responses, each pair's calibrated P(a ≻ b), the 32-d prompt
    embeddings. The drift thresholds are calibrated on it once here (reference-versus-reference windows, mean + k·sd)
    and stored beside it, so the drift sensor only compares windows of served traffic with it."""
    store, settings = storage.storage(), automation.drift_settings()
    table = preference_dataset.table.filter(pl.col("split").is_in(HELD_OUT))
    pairs = list(table.select("prompt", "chosen", "rejected").iter_rows())
    model = ServedModel(ArtifactStore(store).get(reward_model.artifact_id), reward_model.artifact_id,
                        calibrator=rm_calibration.calibrator, calibration_id=rm_calibration.calibration_artifact_id)
    sample = reference_sample(model, pairs, seed=settings.seed)
    ref = dict(artifact_id=reward_model.artifact_id, release=context.partition_key, items=sample.n,
               pairs=sample.n_pairs)
    try:
        calibration = store_reference(store, reward_model.artifact_id, sample, settings)
    except DriftInputError as exc:  # too few held-out pairs for the window size: drift goes unmonitored, said loudly
        context.log.warning(f"no drift reference for {reward_model.artifact_id[:12]}: {exc}")
        return dg.Output(DriftReferenceRef(**ref, calibrated=False, note=str(exc)),
                         metadata={"calibrated": False, "note": str(exc), "items": sample.n})
    thresholds = {name: summary.threshold for name, summary in calibration.tests.items()}
    rows = pl.DataFrame([{"statistic": name, "threshold": round(s.threshold, 4) if s.threshold is not None else None,
                          "null mean": round(s.null_mean, 4) if s.null_mean is not None else None,
                          "null sd": round(s.null_sd, 4) if s.null_sd is not None else None,
                          "note": s.note or ""} for name, s in calibration.tests.items()])
    from rlhf_assets.defs.metadata import md_table

    return dg.Output(
        DriftReferenceRef(**ref, calibrated=True, window=calibration.window, thresholds=thresholds),
        metadata={"calibrated": True, "items": sample.n, "pairs": sample.n_pairs, "window": calibration.window,
                  "k": settings.k, "null_windows": settings.null_windows,
                  "calibration_seconds": round(calibration.seconds, 2), "thresholds": md_table(rows)})
