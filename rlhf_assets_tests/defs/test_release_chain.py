"""The whole release chain on a tiny release, in one Dagster run: preference_dataset → reward_model →
rm_calibration → sft_policy → ppo_policy (both through Pipes), the held-out judge_reward_model (Pipes) →
ope_report → deployment_decision →
production_release; and rollback by materializing an older production_release partition."""

import dagster as dg
from pytest import approx

from rlhf_assets.definitions import defs
from rlhf_assets.defs.check_names import ADVERSARIAL_CHECKS, RELEASE_APPROVED, RELEASE_BLOCKING_CHECKS
from rlhf_assets.defs.metadata import rounded
from rlhf_assets.evaluation.gates import GateInputs, decide
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.references import DecisionRef, read_reference, write_reference
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.registry.decisions import read_decision
from rlhf_assets.registry.listing import release_listing
from rlhf_assets.registry.releases import create_release
from rlhf_assets_tests.defs.dagster_support import GATES, PPO, RELEASE, checks, release_chain_config, run_release


def test_whole_release_chain_decides_and_moves_the_alias(release, dagster_instance):
    result = run_release(dagster_instance, release_chain_config(), job="release_chain")
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert checks(result)["kl_within_budget"] is True
    storage = release
    sft = read_reference(storage, "sft_policy", RELEASE)
    ppo = read_reference(storage, "ppo_policy", RELEASE)
    rm = read_reference(storage, "reward_model", RELEASE)
    store = ArtifactStore(storage)
    manifest = store.manifest(ppo.artifact_id)
    assert manifest["kind"] == "ppo_policy" and manifest["parent_ids"] == [sft.artifact_id, rm.artifact_id]
    assert manifest["dataset_id"] == sft.dataset_id == rm.dataset_id == ppo.dataset_id
    assert list(ppo.parents) == [sft.artifact_id, rm.artifact_id] and ppo.sft_artifact_id == sft.artifact_id
    assert store.manifest(sft.artifact_id)["kind"] == "sft_policy"
    events = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
              for e in result.get_asset_materialization_events()}
    meta = events["ppo_policy"].metadata
    assert meta["artifact_id"].value == ppo.artifact_id      # reported back from the PPO process
    assert meta["stored_as"].value == "json PolicyRef"
    for plot in ("reward_vs_sqrt_kl", "kl_and_beta", "response_length"):
        assert meta[plot].value.startswith("![")
    assert len(meta["history"].value.records) == PPO["steps"]  # shown as a table
    assert ppo.selected_kl <= ppo.kl_budget

    # OPE → decision → alias
    ope_ref = read_reference(storage, "ope_report", RELEASE)
    ope = ope_ref.report
    assert ope_ref.log_sha256 == ope["log_sha256"]
    assert ope["target_policy_id"] == ppo.artifact_id and ope["behavior_policy_id"] == sft.artifact_id
    ope_log = storage.read_parquet(storage.table_path("ope_log", RELEASE))
    assert ope["n"] == ope_log.height > 0

    # the judge: its own reward model, trained on the judge split only (prompts PPO's reward model never saw),
    # scores the same log; both uplifts are reported, labelled
    judge = read_reference(storage, "judge_reward_model", RELEASE)
    dataset = storage.read_parquet(storage.table_path("preference_dataset", RELEASE))
    judge_manifest, rm_manifest = store.manifest(judge.artifact_id), store.manifest(rm.artifact_id)
    assert judge.artifact_id != rm.artifact_id and judge_manifest["kind"] == "judge_reward_model"
    assert judge.kind == "judge_reward_model" and rm.kind == "reward_model"
    assert judge.dataset_id == judge_manifest["dataset_id"] == rm.dataset_id
    assert judge_manifest["data"]["n_train"] == (dataset["split"] == "judge").sum() > 0
    assert rm_manifest["data"]["n_train"] == (dataset["split"] == "train").sum()
    assert judge_manifest["data"]["val_sha256"] == rm_manifest["data"]["val_sha256"]  # early-stopped on validation
    assert judge_manifest["seed"] != rm_manifest["seed"]
    assert ope["judge"]["reward_model_id"] == ope["judge_reward_model_id"] == judge.artifact_id
    assert ope["proxy"]["reward_model_id"] == ope["reward_model_id"] == rm.artifact_id
    assert ope["judge"]["behavior"]["value"] == approx(float(ope_log["judge_reward"].mean()))
    assert ope["proxy"]["behavior"]["value"] == approx(float(ope_log["reward"].mean()))
    ope_meta = events["ope_report"].metadata
    assert ope_meta["judge_uplift"].value == rounded(ope["judge"]["uplift"]["value"])  # shown rounded, stored whole
    assert ope_meta["proxy_uplift"].value == rounded(ope["proxy"]["uplift"]["value"])
    assert "judge uplift" in ope_meta["report"].value and "proxy uplift" in ope_meta["report"].value
    record = read_decision(storage, RELEASE)
    calibration = read_reference(storage, "rm_calibration", RELEASE)
    upstream = record["inputs"]["upstream_checks"]
    assert [c["check"] for c in upstream] == [f"{a}:{c}" for a, c in RELEASE_BLOCKING_CHECKS]  # from the instance
    assert {c["status"] for c in upstream} == {"passed"}, upstream
    # the adversarial evaluation ran on this release; its checks are what the decision read
    adversarial = read_reference(storage, "adversarial_eval", RELEASE)
    assert [c["check"] for c in adversarial.checks] == [c for a, c in ADVERSARIAL_CHECKS]
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()
            if e.asset_key.to_user_string() == "adversarial_eval"} == {c["check"]: c["passed"]
                                                                       for c in adversarial.checks}
    assert adversarial.report["policy"]["candidate"]["n"] > 0 and adversarial.report["worst_examples"]
    assert "worst_examples" in events["adversarial_eval"].metadata
    expected = decide(GateInputs.from_release(ope_ref, ppo, calibration, upstream), ReleaseThresholds(**GATES))
    assert record["gates"] == expected.to_dict()["gates"]
    assert record["verdict"] == expected.verdict and record["artifacts"]["policy"] == ppo.artifact_id
    decision = read_reference(storage, "deployment_decision", RELEASE)
    assert decision.verdict == record["verdict"] and decision.artifacts == record["artifacts"]
    assert store.manifest(record["artifacts"]["calibration"])["kind"] == "calibration"
    decision_meta = events["deployment_decision"].metadata
    assert [r.data["gate"] for r in decision_meta["gates"].records] == [g["name"] for g in record["gates"]]
    # the verdict at a glance: a tag on the materialization, and release_approved warns unless it goes live
    assert events["deployment_decision"].tags["rlhf/verdict"] == record["verdict"]
    (approved,) = [e for e in result.get_asset_check_evaluations() if e.check_name == RELEASE_APPROVED]
    assert approved.passed is (record["verdict"] in ("promote", "canary"))
    assert approved.severity == dg.AssetCheckSeverity.WARN
    aliases = Registry(storage).aliases()
    moved = {"promote": "production", "canary": "canary"}.get(record["verdict"])
    for alias in ("production", "canary"):
        holder = aliases[alias]
        if alias == moved:
            assert holder["release"] == RELEASE and holder["artifacts"] == record["artifacts"]
        else:
            assert holder is None
    assert release_listing(storage)["releases"][0]["verdict"] == record["verdict"]


def _artifact(store, tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "weights.bin").write_text(name)
    return store.put_dir(d, kind="policy_stub", manifest={"name": name}).id


def test_rollback_is_rematerializing_an_older_production_release(storage_root, dagster_instance, tmp_path):
    """promote r1, promote r2, rematerialize r1 → the aliases hold r1's artifact ids, the history has three entries,
    and r2's artifacts are still in the store. Decisions are written as the deployment_decision asset stores them;
    each step is a real Dagster run of production_release."""
    from rlhf_assets.storage import Storage

    storage = Storage(storage_root)
    store = ArtifactStore(storage)
    r1, r2 = "r20250601-2359", "r20250602-2359"
    for key in (r1, r2):
        create_release(storage, key=key)
        dagster_instance.add_dynamic_partitions("release", [key])
        arts = {"policy": _artifact(store, tmp_path, f"{key}-policy"), "reward_model": _artifact(store, tmp_path, f"{key}-rm")}
        write_reference(storage, "deployment_decision", key, DecisionRef(release=key, verdict="promote", artifacts=arts))
    job = defs().resolve_job_def("apply_release_decision")
    for key in (r1, r2, r1):
        assert job.execute_in_process(partition_key=key, instance=dagster_instance).success
    reg = Registry(storage)
    r1_arts = read_reference(storage, "deployment_decision", r1).artifacts
    r2_arts = read_reference(storage, "deployment_decision", r2).artifacts
    assert reg.current("production")["artifacts"] == r1_arts
    assert [h["action"] for h in reg.history()] == ["promote", "promote", "rollback"]
    assert all(store.exists(i) for i in r2_arts.values())
    runs = dagster_instance.get_runs(dg.RunsFilter(job_name="apply_release_decision"))
    assert len(runs) == 3  # each move is a run the UI shows


def test_a_rejected_release_warns_and_production_release_still_records_that_nothing_moved(storage_root,
                                                                                        dagster_instance):
    """The verdict shows at a glance: with no evidence at all (no upstream checks, empty reports) the decision is
    reject, its release_approved check WARNs on the materialization — and, being non-blocking, does not stop
    production_release, which runs in the same job and moves nothing."""
    from rlhf_assets.references import AdversarialRef, CalibrationRef, ModelRef, OPERef, PolicyRef
    from rlhf_assets.storage import Storage

    storage = Storage(storage_root)
    create_release(storage, key=RELEASE)
    dagster_instance.add_dynamic_partitions("release", [RELEASE])
    stand_ins = {"sft_policy": ModelRef(artifact_id="sft", kind="sft_policy", dataset_id="d"),
                 "reward_model": ModelRef(artifact_id="rm", kind="reward_model", dataset_id="d"),
                 "ppo_policy": PolicyRef(artifact_id="ppo", kind="ppo_policy", dataset_id="d"),
                 "rm_calibration": CalibrationRef(reward_model_id="rm", dataset_id="d", calibration_artifact_id=None,
                                                  calibrator=None, report={}),
                 "ope_report": OPERef(report={}, log_uri="none", log_sha256="none"),
                 "adversarial_eval": AdversarialRef(report={})}
    for asset, ref in stand_ins.items():
        write_reference(storage, asset, RELEASE, ref)
    result = defs().resolve_job_def("release_chain").execute_in_process(
        partition_key=RELEASE, instance=dagster_instance, raise_on_error=False,
        asset_selection=[dg.AssetKey("deployment_decision"), dg.AssetKey("production_release")])
    assert result.success
    (approved,) = result.get_asset_check_evaluations()
    assert approved.check_name == RELEASE_APPROVED and approved.passed is False
    assert approved.severity == dg.AssetCheckSeverity.WARN and approved.description.startswith("reject: ")
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data
                    .materialization for e in result.get_asset_materialization_events()}
    assert materialized["deployment_decision"].tags["rlhf/verdict"] == "reject"
    assert materialized["production_release"].metadata["action"].value == "none"
    assert Registry(storage).aliases() == {"production": None, "canary": None}
