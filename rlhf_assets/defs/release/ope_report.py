from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.evaluation.release_ope import OPESettings, evaluate_release
from rlhf_assets.pipes_report import png_markdown
from rlhf_assets.registry.artifacts import ArtifactStore


class OPEReportConfig(dg.Config):
    n_prompts: int = OPESettings.n_prompts
    """Held-out (test-split) prompts a simulated log is drawn from when there are no serving logs."""
    samples_per_prompt: int = OPESettings.samples_per_prompt
    estimator: Literal["is", "snis", "clipped_is", "dr", "sndr"] = "sndr"
    n_boot: int = OPESettings.n_boot
    min_ess_share: float = OPESettings.min_ess_share
    """The estimate is 'unreliable' when the effective sample size is below this share of the log."""
    max_pareto_k: float = OPESettings.max_pareto_k
    """The estimate is 'unreliable' when the PSIS tail index k̂ exceeds this."""
    dm_samples: int = OPESettings.dm_samples
    seed: int = OPESettings.seed


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"pytorch", "numpy"},
          io_manager_key="table_io_manager")
def ope_report(
    context: dg.AssetExecutionContext,
    config: OPEReportConfig,
    storage: StorageResource,
    preference_dataset: pl.DataFrame,
    sft_policy: dict,
    ppo_policy: dict,
    reward_model: dict,
    rm_calibration: dict,
    judge_reward_model: dict,
):
    """Off-policy estimate of the PPO policy's value against the behaviour (production) policy's logged samples,
    twice on the same log and importance weights: with the proxy (the calibrated reward model PPO optimised;
    reported only) and with the held-out judge reward model (every logged response re-scored; its uplift gates).
    SNDR/SNIS with bootstrap intervals, ESS and PSIS k̂ (refused as 'unreliable' when the weights cannot support a
    number), a weight histogram and a markdown report."""
    store = storage.storage()
    ppo_config = ArtifactStore(store).manifest(ppo_policy["artifact_id"])["config"]
    prompts = (preference_dataset.filter(pl.col("split") == "test").select("prompt").unique(maintain_order=True)
               ["prompt"].to_list())
    result = evaluate_release(
        store, sft_id=sft_policy["artifact_id"], target_id=ppo_policy["artifact_id"],
        reward_id=reward_model["artifact_id"], calibrator=rm_calibration["calibrator"], prompts=prompts,
        max_prompt_tokens=int(ppo_config["max_prompt_tokens"]), max_new_tokens=int(ppo_config["max_new_tokens"]),
        judge_id=judge_reward_model["artifact_id"], settings=OPESettings(**config.model_dump()))
    log_path = store.table_path("ope_log", context.partition_key)
    log_sha = store.write_parquet(log_path, result.log)
    r = result.report
    proxy, judge = r["proxy"], r["judge"]
    context.log.info(f"OPE: {result.log_source}; judge uplift {judge['uplift']['value']}, proxy uplift "
                     f"{proxy['uplift']['value']}, reliable={r['reliable']}")
    report = {**r, "log_path": str(log_path), "log_sha256": log_sha}
    labelled = {f"{name}_{key}": side[part][field]
                for name, side in (("judge", judge), ("proxy", proxy))
                for key, part, field in (("uplift", "uplift", "value"), ("uplift_ci_low", "uplift", "ci_low"),
                                         ("uplift_ci_high", "uplift", "ci_high"), ("target_value", "target", "value"),
                                         ("behavior_value", "behavior", "value"))}
    return dg.Output(report, metadata={
        **labelled, "judge_units": judge["units"], "proxy_units": proxy["units"],
        "judge_reward_model": judge["reward_model_id"], "proxy_reward_model": proxy["reward_model_id"],
        "ess": r["ess"], "ess_share": r["ess_share"],
        "pareto_k": r["pareto_k"], "reliable": r["reliable"], "reason": r["reason"] or "",
        "behavior_policy": f"{result.behavior_id[:16]} ({r['behavior_origin']})", "log_source": result.log_source,
        "logged_samples": result.log.height, "log": dg.MetadataValue.path(str(log_path)),
        "weights": dg.MetadataValue.md(png_markdown(result.weights_png, "importance weights")),
        "report": dg.MetadataValue.md(result.markdown),
    })
