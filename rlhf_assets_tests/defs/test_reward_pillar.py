"""preference_dataset → reward_model (Lightning through Dagster Pipes) → rm_calibration on a tiny release."""

import json

import dagster as dg
import pytest

from rlhf_assets.definitions import defs
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.registry.releases import create_release
from rlhf_assets.storage import Storage

DAY = "2025-06-01"
RELEASE = "r20250601-2359"
TINY = {"preset": "tiny", "max_length": 48, "batch_size": 16, "epochs": 4, "lr": 3e-3}


def learnable_pairs(n=240, start=0):
    """Chosen responses say something helpful, rejected ones something rude: a tiny model learns it in seconds."""
    return [{"prompt": f"Human: question number {k}?\n\nAssistant:",
             "chosen": f"sure, here is a helpful answer about topic {k % 17}",
             "rejected": f"no, go away, that is a stupid question about topic {k % 13}"} for k in range(start, start + n)]


@pytest.fixture
def release(storage_root, dagster_instance):
    storage = Storage(storage_root)
    batch = simulate_comparisons(learnable_pairs(), dates=[DAY], labels_per_pair=3, seed=3)
    for day, (name, data) in landing_files(batch).items():
        storage.write_bytes(storage.landing_dir(day).joinpath(name), data)
    assert defs().resolve_job_def("data_pillar").execute_in_process(partition_key=DAY, instance=dagster_instance).success
    create_release(storage, key=RELEASE)
    dagster_instance.add_dynamic_partitions("release", [RELEASE])
    return storage


def run_release(instance, run_config, definitions=None, job="reward_pillar"):
    d = definitions or defs()
    return d.resolve_job_def(job).execute_in_process(partition_key=RELEASE, instance=instance,
                                                     run_config=run_config, raise_on_error=False)


def checks(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def config(min_accuracy=0.6, max_ece=0.5):
    return {"ops": {"reward_model": {"config": TINY},
                    "rm_calibration": {"config": {"min_test_accuracy": min_accuracy, "max_calibrated_ece": max_ece,
                                                  "n_bootstrap": 200}}}}


def test_reward_pillar_materializes_a_tiny_release(release, dagster_instance):
    result = run_release(dagster_instance, config())
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert checks(result) == {"test_accuracy": True, "calibrated_ece": True, "no_nan_scores": True}
    storage = release
    reference = json.loads(storage.table_path("reward_model", RELEASE).with_suffix(".json").read_text())
    manifest = ArtifactStore(storage).manifest(reference["artifact_id"])
    pointer = json.loads(storage.path("registry", "releases", f"{RELEASE}.dataset.json").read_text())
    assert manifest["dataset_id"] == reference["dataset_id"] == pointer["dataset_id"]
    calibration = json.loads(storage.table_path("rm_calibration", RELEASE).with_suffix(".json").read_text())
    assert calibration["artifact_id"] == reference["artifact_id"]
    assert calibration["calibrator"]["method"] in ("platt", "isotonic")
    events = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    rm_meta = events["reward_model"].metadata
    assert rm_meta["artifact_id"].value == reference["artifact_id"]  # reported back from the training process
    assert "reliability_diagram" in events["rm_calibration"].metadata


def test_rematerializing_an_old_release_reads_its_own_snapshot(release, dagster_instance):
    only_dataset = {"ops": {}}
    d = defs()
    first = d.resolve_job_def("reward_pillar").execute_in_process(
        partition_key=RELEASE, instance=dagster_instance, asset_selection=[dg.AssetKey("preference_dataset")])
    # new annotations arrive for the same day after the release was cut
    storage = release
    extra = simulate_comparisons(learnable_pairs(40, start=1000), dates=[DAY], labels_per_pair=3, seed=9, batch_id="late")
    for day, (name, data) in landing_files(extra).items():
        storage.write_bytes(storage.landing_dir(day).joinpath(name), data)
    assert d.resolve_job_def("data_pillar").execute_in_process(partition_key=DAY, instance=dagster_instance).success
    second = d.resolve_job_def("reward_pillar").execute_in_process(
        partition_key=RELEASE, instance=dagster_instance, asset_selection=[dg.AssetKey("preference_dataset")],
        run_config=only_dataset)

    def meta(result):
        (event,) = result.get_asset_materialization_events()
        return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}

    assert meta(second)["dataset_id"] == meta(first)["dataset_id"]
    assert meta(second)["reused_pinned_snapshot"] is True and meta(first)["reused_pinned_snapshot"] is False


def test_failing_calibration_check_blocks_downstream(release, dagster_instance):
    """The real policy pillar in the same run: ppo_policy must not train on a reward model that failed its checks."""
    run_config = config(min_accuracy=1.01)
    run_config["ops"]["sft_policy"] = {"config": {"epochs": 1, "max_prompt_tokens": 16, "max_response_tokens": 8}}
    result = run_release(dagster_instance, run_config, job="release_chain")
    assert not result.success
    assert checks(result)["test_accuracy"] is False
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    assert "reward_model" in materialized and "ppo_policy" not in materialized


def test_ddp_through_dagster_pipes_matches_one_process(release, dagster_instance):
    """The asset's own path: PipesSubprocessClient → `rm train` → Lightning DDP over 2 CPU processes (gloo); only
    rank 0 reports back. Same global batch (2 × 8 vs 1 × 16) → the same validation metrics within 1e-4."""
    d = defs()
    select = [dg.AssetKey("preference_dataset"), dg.AssetKey("reward_model")]

    def train(extra):
        cfg = {"ops": {"reward_model": {"config": TINY | {"epochs": 1} | extra}}}
        result = d.resolve_job_def("reward_pillar").execute_in_process(
            partition_key=RELEASE, instance=dagster_instance, run_config=cfg, asset_selection=select)
        (event,) = [e for e in result.get_asset_materialization_events()
                    if e.event_specific_data.materialization.asset_key.path == ["reward_model"]]
        return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}

    single = train({})
    ddp = train({"devices": 2, "strategy": "ddp", "batch_size": 8})
    assert ddp["global_step"] == single["global_step"]
    for key in ("val_log_loss", "val_accuracy", "val_loss_best"):
        assert abs(ddp[key] - single[key]) <= 1e-4, (key, ddp[key], single[key])
