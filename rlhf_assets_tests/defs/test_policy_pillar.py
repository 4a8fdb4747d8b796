"""sft_policy → ppo_policy through Dagster Pipes on a tiny release (after its reward pillar)."""

import json

from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets_tests.defs.test_reward_pillar import RELEASE, checks, config, release, run_release  # noqa: F401

SFT = {"epochs": 3, "max_prompt_tokens": 24, "max_response_tokens": 16}
PPO = {"steps": 4, "rollout_prompts": 16, "minibatch_size": 8, "micro_batch_size": 8, "max_new_tokens": 12,
       "max_prompt_tokens": 24, "eval_every": 2, "n_eval_prompts": 16, "lr": 1e-3}


def test_sft_then_ppo_materialize_on_a_tiny_release(release, dagster_instance):  # noqa: F811
    run_config = config()
    run_config["ops"].update({"sft_policy": {"config": SFT}, "ppo_policy": {"config": PPO}})
    result = run_release(dagster_instance, run_config, job="release_chain")
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert checks(result)["kl_within_budget"] is True
    storage = release
    sft = json.loads(storage.table_path("sft_policy", RELEASE).with_suffix(".json").read_text())
    ppo = json.loads(storage.table_path("ppo_policy", RELEASE).with_suffix(".json").read_text())
    rm = json.loads(storage.table_path("reward_model", RELEASE).with_suffix(".json").read_text())
    store = ArtifactStore(storage)
    manifest = store.manifest(ppo["artifact_id"])
    assert manifest["kind"] == "ppo_policy" and manifest["parent_ids"] == [sft["artifact_id"], rm["artifact_id"]]
    assert manifest["dataset_id"] == sft["dataset_id"] == rm["dataset_id"]
    assert store.manifest(sft["artifact_id"])["kind"] == "sft_policy"
    events = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    meta = events["ppo_policy"].metadata
    assert meta["artifact_id"].value == ppo["artifact_id"]      # reported back from the PPO process
    for plot in ("reward_vs_sqrt_kl", "kl_and_beta", "response_length"):
        assert meta[plot].value.startswith("![")
    assert len(meta["history"].value) == PPO["steps"]
    assert ppo["selected_kl"] <= ppo["kl_budget"]
