"""preference_dataset → reward_model (Lightning through Dagster Pipes) → rm_calibration on a tiny release."""

import dataclasses
import json
import shutil

import dagster as dg
import polars as pl
import pytest

from rlhf_assets.definitions import defs
from rlhf_assets.defs.check_names import CALIBRATED_ECE, NO_NAN_SCORES, TEST_ACCURACY
from rlhf_assets.defs.metadata import rounded
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.preference.snapshot import SnapshotSettings, prompt_bucket, split_of
from rlhf_assets.references import CalibrationRef, ModelRef, read_reference, write_reference
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets_tests.defs.dagster_support import DAY, RELEASE, TINY, checks, config, land_release, run_release
from rlhf_assets_tests.support import learnable_pairs


def on_test_split(pairs):
    splits = pl.DataFrame({"prompt": [p["prompt"] for p in pairs]}).select(
        split_of(prompt_bucket(pl.col("prompt")), SnapshotSettings()))[:, 0]
    return (splits == "test").to_list()


@pytest.fixture
def release_test_humans_disagree(storage_root, dagster_instance):
    """The humans of the test split prefer the rude response: to them the trained reward model is inverted (a
    globally inverted model would not do — Platt, fitted on the validation split, would just flip its sign)."""
    pairs = learnable_pairs()
    flipped = [p | {"chosen": p["rejected"], "rejected": p["chosen"]} if on_test else p
               for p, on_test in zip(pairs, on_test_split(pairs))]
    return land_release(storage_root, dagster_instance, flipped)


def check_metadata(result, name):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return {k: v.value for k, v in evaluation.metadata.items()}


def materialized(result):
    return {e.event_specific_data.materialization.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()}


#: rm_calibration and what follows it up to PPO: sft_policy is in the selection, so ppo_policy has every input and
#: only rm_calibration's blocking checks can keep it from running.
THROUGH_PPO = [dg.AssetKey(k) for k in ("preference_dataset", "reward_model", "rm_calibration", "sft_policy",
                                        "ppo_policy")]
POLICY_OPS = {"sft_policy": {"config": {"epochs": 1, "max_prompt_tokens": 16, "max_response_tokens": 8}},
              "ppo_policy": {"config": {"steps": 2, "rollout_prompts": 8, "minibatch_size": 8, "micro_batch_size": 8,
                                        "max_new_tokens": 8, "max_prompt_tokens": 16, "eval_every": 1,
                                        "n_eval_prompts": 8}}}


def run_through_ppo(instance, run_config, selection=THROUGH_PPO):
    run_config["ops"].update(POLICY_OPS)
    return defs().resolve_job_def("release_chain").execute_in_process(
        partition_key=RELEASE, instance=instance, run_config=run_config, asset_selection=selection,
        raise_on_error=False)


def assert_ppo_blocked(result):
    assert not result.success
    done = materialized(result)
    assert "rm_calibration" in done and "sft_policy" in done  # the record is stored; PPO had all its inputs
    assert "ppo_policy" not in done
    assert not [e for e in result.all_events if e.step_key == "ppo_policy" and e.event_type_value == "STEP_START"]


@pytest.mark.slow
def test_reward_pillar_materializes_a_tiny_release(release, dagster_instance):
    result = run_release(dagster_instance, config())
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert checks(result) == {TEST_ACCURACY: True, CALIBRATED_ECE: True, NO_NAN_SCORES: True}
    storage = release
    reference = read_reference(storage, "reward_model", RELEASE)
    assert isinstance(reference, ModelRef) and reference.kind == "reward_model"
    manifest = ArtifactStore(storage).manifest(reference.artifact_id)
    pointer = json.loads(storage.path("registry", "releases", f"{RELEASE}.dataset.json").read_text())
    assert manifest["dataset_id"] == reference.dataset_id == pointer["dataset_id"]
    calibration = read_reference(storage, "rm_calibration", RELEASE)
    assert isinstance(calibration, CalibrationRef)
    assert calibration.reward_model_id == reference.artifact_id and calibration.dataset_id == reference.dataset_id
    assert calibration.calibrator["method"] in ("platt", "isotonic")
    report = calibration.report
    assert report["method"] == min(report["cv_log_loss"], key=report["cv_log_loss"].get)
    for key, ci in (("accuracy", "accuracy_ci"), ("ece_after_debiased", "ece_after_ci")):
        assert report[ci][0] <= report[key] <= report[ci][1]
    assert report["n_bootstrap"] == 200 and calibration.human_correlation["n_boot"] == 200
    accuracy = check_metadata(result, TEST_ACCURACY)
    assert accuracy["outcome"] in ("pass", "inconclusive") and accuracy["threshold"] == 0.6
    assert [accuracy["ci_low"], accuracy["ci_high"]] == rounded(report["accuracy_ci"])  # shown rounded
    events = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    rm_meta = events["reward_model"].metadata
    assert rm_meta["artifact_id"].value == reference.artifact_id  # reported back from the training process
    assert rm_meta["stored_as"].value == "json ModelRef"
    assert events["preference_dataset"].metadata["stored_as"].value == "parquet table (DatasetTable)"
    assert "reliability_diagram" in events["rm_calibration"].metadata


@pytest.mark.slow
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


def test_interval_check_fails_only_on_evidence_or_nothing_measured():
    from rlhf_assets.defs.reward.rm_calibration import interval_check

    cases = [([0.65, 0.8], ">=", "pass", True), ([0.5, 0.7], ">=", "inconclusive", True),
             ([0.3, 0.55], ">=", "fail", False), ([None, None], ">=", "not measured", False),
             ([0.01, 0.04], "<=", "pass", True), ([0.06, 0.09], "<=", "fail", False)]
    for ci, comparison, expected, passed in cases:
        threshold = 0.6 if comparison == ">=" else 0.05
        result = interval_check(TEST_ACCURACY, 0.5, ci, threshold, comparison)
        meta = {k: v.value for k, v in result.metadata.items()}
        assert (result.passed, meta["outcome"]) == (passed, expected), (ci, comparison)
        assert meta == {"value": 0.5, "ci_low": ci[0], "ci_high": ci[1], "threshold": threshold, "outcome": expected}


@pytest.mark.slow
def test_inaccurate_reward_model_fails_test_accuracy_and_blocks_ppo(release_test_humans_disagree,
                                                                   dagster_instance):
    """Accuracy's interval wholly below the limit fails the check, and ppo_policy in the same run does not train on
    that reward model. The ECE limit is opened wide so test_accuracy alone blocks."""
    result = run_through_ppo(dagster_instance, config(max_ece=1.0))
    assert checks(result) == {TEST_ACCURACY: False, CALIBRATED_ECE: True, NO_NAN_SCORES: True}
    meta = check_metadata(result, TEST_ACCURACY)
    assert meta["outcome"] == "fail" and meta["threshold"] == ReleaseThresholds.min_rm_test_accuracy
    assert meta["ci_low"] <= meta["value"] <= meta["ci_high"] < meta["threshold"]
    assert_ppo_blocked(result)


@pytest.mark.slow
def test_tight_ece_threshold_fails_calibrated_ece_and_blocks_ppo(release, dagster_instance):
    """The limit comes from the release_thresholds resource (not the asset's config): tightened there, the ECE
    interval lies wholly above it and the check fails."""
    result = run_through_ppo(dagster_instance, config(max_ece=0.01))
    assert checks(result) == {TEST_ACCURACY: True, CALIBRATED_ECE: False, NO_NAN_SCORES: True}
    meta = check_metadata(result, CALIBRATED_ECE)
    assert meta["outcome"] == "fail" and meta["threshold"] == 0.01
    assert meta["threshold"] < meta["ci_low"] <= meta["value"] <= meta["ci_high"]
    assert_ppo_blocked(result)
    # A later run of PPO alone (Dagster blocks only within the run that evaluated the check) refuses as well.
    later = run_through_ppo(dagster_instance, config(max_ece=0.01), selection=[dg.AssetKey("ppo_policy")])
    assert not later.success and "ppo_policy" not in materialized(later)
    failure = next(e for e in later.all_events if e.is_step_failure)
    assert "rm_calibration:calibrated_ece failed" in failure.event_specific_data.error.message


def nan_weights_artifact(storage, artifact_id, tmp_path):
    """A copy of a reward-model artifact whose head weights are NaN (what a diverged run would store)."""
    from safetensors.torch import load_file, save_file

    store = ArtifactStore(storage)
    work = tmp_path / "nan_reward_model"
    shutil.copytree(store.get(artifact_id), work, ignore=shutil.ignore_patterns("manifest.json"))
    weights = load_file(work / "model.safetensors")
    for name in [n for n in weights if n.startswith("head.")]:
        weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, work / "model.safetensors", metadata={"format": "pt"})
    manifest = {k: v for k, v in store.manifest(artifact_id).items() if k not in ("id", "kind", "files", "created_at")}
    return store.put_dir(work, kind=store.manifest(artifact_id)["kind"], manifest=manifest).id


@pytest.mark.slow
def test_nan_reward_model_fails_no_nan_scores_and_blocks_ppo(release, dagster_instance, tmp_path):
    """The stored reward model is swapped for one whose weights are NaN: every score is NaN, nothing can be
    calibrated, and rm_calibration still reports — no_nan_scores fails and accuracy / ECE fail closed as not
    measured — so ppo_policy does not run."""
    storage = release
    first = run_through_ppo(dagster_instance, config(), selection=THROUGH_PPO[:2])
    assert first.success
    reference = read_reference(storage, "reward_model", RELEASE)
    broken = dataclasses.replace(reference, artifact_id=nan_weights_artifact(storage, reference.artifact_id, tmp_path))
    write_reference(storage, "reward_model", RELEASE, broken)

    result = run_through_ppo(dagster_instance, config(max_ece=1.0), selection=THROUGH_PPO[2:])
    assert checks(result) == {TEST_ACCURACY: False, CALIBRATED_ECE: False, NO_NAN_SCORES: False}
    assert check_metadata(result, NO_NAN_SCORES)["nan_scores"] > 0
    for name in (TEST_ACCURACY, CALIBRATED_ECE):
        meta = check_metadata(result, name)
        assert meta["outcome"] == "not measured" and meta["value"] is None
    record = read_reference(storage, "rm_calibration", RELEASE)
    assert record.calibrator is None and record.report["nan_scores"] == check_metadata(
        result, NO_NAN_SCORES)["nan_scores"]
    assert_ppo_blocked(result)


@pytest.mark.slow
def test_ddp_through_dagster_pipes_matches_one_process(release, dagster_instance):
    """The asset's own path: PipesSubprocessClient → `rm train` → Lightning DDP over 2 CPU processes (gloo); only
    rank 0 reports back. Same global batch (2 × 8 vs 1 × 16) → the same validation metrics within 1e-4."""
    d = defs()
    select = [dg.AssetKey("preference_dataset"), dg.AssetKey("reward_model")]

    def train(extra):
        cfg = {"ops": {"reward_model": {"config": TINY | {"epochs": 1} | extra}}}
        result = d.resolve_job_def("reward_pillar").execute_in_process(
            partition_key=RELEASE, instance=dagster_instance, run_config=cfg, asset_selection=select)
        assert result.success
        # what rank 0 reported, at full precision (the materialization shows it rounded)
        return read_reference(release, "reward_model", RELEASE).metrics

    single = train({})
    ddp = train({"devices": 2, "strategy": "ddp", "batch_size": 8})
    assert ddp["global_step"] == single["global_step"]
    for key in ("val_log_loss", "val_accuracy", "val_loss_best"):
        assert abs(ddp[key] - single[key]) <= 1e-4, (key, ddp[key], single[key])
