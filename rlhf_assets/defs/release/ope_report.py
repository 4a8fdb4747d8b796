import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, md_image
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.evaluation.release_ope import OPESettings, evaluate_release, store_release_ope
from rlhf_assets.preference.snapshot import split_prompts
from rlhf_assets.references import CalibrationRef, DatasetTable, ModelRef, OPERef, PolicyRef

OPEReportConfig = config_class("OPEReportConfig", OPESettings)


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"pytorch", "numpy"}, owners=OWNERS)
def ope_report(
    context: dg.AssetExecutionContext,
    config: OPEReportConfig,
    storage: StorageResource,
    preference_dataset: DatasetTable,
    sft_policy: ModelRef,
    ppo_policy: PolicyRef,
    reward_model: ModelRef,
    rm_calibration: CalibrationRef,
    judge_reward_model: ModelRef,
) -> dg.Output[OPERef]:
    """Off-policy estimate of the PPO policy's value against the behaviour (production) policy's logged samples,
    twice on the same log and importance weights: with the proxy (the calibrated reward model PPO optimised;
    reported only) and with the held-out judge reward model (every logged response re-scored; its uplift gates).
    SNDR/SNIS with bootstrap intervals, ESS and PSIS k̂ (refused as 'unreliable' when the weights cannot support a
    number), a weight histogram and a markdown report."""
    store = storage.storage()
    result = evaluate_release(
        store, target=ppo_policy.artifact_id, reward_model=reward_model.artifact_id,
        calibrator=rm_calibration.calibrator, judge=judge_reward_model.artifact_id, sft=sft_policy.artifact_id,
        prompts=split_prompts(preference_dataset.table, "test"), settings=settings_from(config, OPESettings))
    ref = store_release_ope(store, context.partition_key, result)
    r = result.report
    proxy, judge = r["proxy"], r["judge"]
    context.log.info(f"OPE: {result.log_source}; judge uplift {judge['uplift']['value']}, proxy uplift "
                     f"{proxy['uplift']['value']}, reliable={r['reliable']}")
    labelled = {f"{name}_{key}": side[part][field]
                for name, side in (("judge", judge), ("proxy", proxy))
                for key, part, field in (("uplift", "uplift", "value"), ("uplift_ci_low", "uplift", "ci_low"),
                                         ("uplift_ci_high", "uplift", "ci_high"), ("target_value", "target", "value"),
                                         ("behavior_value", "behavior", "value"))}
    return dg.Output(ref, metadata=display({
        **labelled, "judge_units": judge["units"], "proxy_units": proxy["units"],
        "judge_reward_model": judge["reward_model_id"], "proxy_reward_model": proxy["reward_model_id"],
        "ess": r["ess"], "ess_share": r["ess_share"],
        "pareto_k": r["pareto_k"], "reliable": r["reliable"], "reason": r["reason"] or "",
        "behavior_policy": f"{result.behavior_id[:16]} ({r['behavior_origin']})", "log_source": result.log_source,
        "logged_samples": result.log.height, "log": dg.MetadataValue.path(ref.log_uri),
        "weights": md_image(result.weights_png, "importance weights"),
        "report": dg.MetadataValue.md(result.markdown),
    }))
