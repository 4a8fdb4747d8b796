"""ppo_policy's blocking kl_within_budget check, through the real release chain: it measures the stored policy's KL
to its SFT reference on fresh held-out samples (policy/kl_check.py) and fails the release when that is over the
limit, whatever the trainer reported; then nothing downstream (ope_report, deployment_decision) materializes."""

from rlhf_assets.defs.check_names import KL_WITHIN_BUDGET
from rlhf_assets.defs.metadata import rounded
from rlhf_assets.references import read_reference
from rlhf_assets_tests.defs.dagster_support import RELEASE, TINY, run_release

SFT = {"epochs": 3, "max_prompt_tokens": 24, "max_response_tokens": 16}

#: PPO that moves away from the reference (no KL penalty, a large step, the checkpoint with the best reward kept).
DRIFTING_PPO = {"steps": 4, "rollout_prompts": 16, "minibatch_size": 8, "micro_batch_size": 8, "max_new_tokens": 12,
                "max_prompt_tokens": 24, "eval_every": 2, "n_eval_prompts": 16, "lr": 1e-2, "init_kl_coef": 0.0,
                "adaptive_kl": False, "select_by": "proxy_reward", "kl_check_prompts": 24, "kl_check_seed": 3}
#: The release's KL limit, tightened far below PPO's own kl_budget (12 nats) through the release_thresholds resource.
MAX_KL = 0.05


def test_over_the_release_kl_limit_fails_the_check_and_blocks_downstream(release, dagster_instance):
    ops = {"reward_model": TINY, "judge_reward_model": TINY, "sft_policy": SFT, "ppo_policy": DRIFTING_PPO}
    # Tiny data cannot reach production-grade calibration: relaxed so the chain gets as far as ppo_policy.
    thresholds = {"max_kl": MAX_KL, "max_calibrated_ece": 0.5, "min_human_rm_correlation": -1.0, "n_bootstrap": 200}
    run_config = {"ops": {k: {"config": v} for k, v in ops.items()},
                  "resources": {"release_thresholds": {"config": thresholds}}}
    result = run_release(dagster_instance, run_config, job="release_chain")
    assert not result.success
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == KL_WITHIN_BUDGET]
    assert len(evaluations) == 1, [e.message for e in result.all_events if e.is_failure]
    (check,) = evaluations
    meta = {k: v.value for k, v in check.metadata.items()}
    ppo = read_reference(release, "ppo_policy", RELEASE)
    assert ppo.selected_step > 0                     # a trained policy, not the reference itself
    # The trainer's own number is inside PPO's budget (the old check compared exactly this and passed) ...
    assert ppo.selected_kl <= ppo.kl_budget == meta["kl_budget"] == 12.0
    # ... the independent measurement is over the release's limit: the check fails on the point estimate.
    assert check.passed is False
    assert meta["threshold"] == MAX_KL and meta["value"] > MAX_KL
    assert meta["ci_low"] <= meta["value"] <= meta["ci_high"]
    assert meta["selected_kl"] == rounded(ppo.selected_kl)  # the check shows numbers rounded; the ref keeps them
    dataset = release.read_parquet(release.table_path("preference_dataset", RELEASE))
    n_test = dataset.filter(dataset["split"] == "test")["prompt"].n_unique()
    assert meta["n_prompts"] == min(24, n_test) and meta["seed"] == 3  # the held-out test prompts
    assert meta["outcome"] == "fail"                   # several nats measured: the whole interval is over 0.05
    assert rounded(ppo.measured_kl) == {"value": meta["value"], "ci_low": meta["ci_low"], "ci_high": meta["ci_high"],
                                          "limit": MAX_KL, "kl_budget": 12.0, "outcome": meta["outcome"],
                                          "n_prompts": meta["n_prompts"], "seed": 3}

    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert "ppo_policy" in materialized
    assert not materialized & {"ope_report", "deployment_decision", "production_release"}
