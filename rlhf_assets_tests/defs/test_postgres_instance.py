"""The production instance on PostgreSQL (dagster.postgres.yaml, k8s/dagster.yaml): the configs validate against
the schemas of Dagster and of the classes they name; on a real server (initdb + pg_ctl on loopback, the
`postgres_instance` fixture) the data pillar and a release's decision run, and the check history and partitions
read back from Postgres drive the deployment gate exactly as the embedded SQLite instance does."""

import dataclasses
import json
import os
import re

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import pg_url_from_config
from sqlalchemy.engine import make_url

from rlhf_assets.definitions import defs
from rlhf_assets.defs.check_names import (
    ADVERSARIAL_CHECKS,
    CALIBRATION_BLOCKING_CHECKS,
    KL_WITHIN_BUDGET,
    QUARANTINE_RATE,
    RELEASE_BLOCKING_CHECKS,
    ROWS_CONSERVED,
)
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.release.checks_lookup import blocking_check_statuses, check_status
from rlhf_assets.evaluation.gates import GateInputs, decide
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.references import AdversarialRef, ModelRef, OPERef, PolicyRef, read_reference, write_reference
from rlhf_assets.registry.decisions import read_decision
from rlhf_assets_tests.defs.dagster_support import DAY, RELEASE, config, land_release
from rlhf_assets_tests.support import GOOD, REPO, learnable_pairs

PG_ENV = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "6432", "DAGSTER_PG_USER": "dagster",
          "DAGSTER_PG_PASSWORD": "s3cret/+@:%", "DAGSTER_PG_DB": "rlhf"}
K8S_ENV = {"DAGSTER_HOME": "/opt/dagster/dagster_home", "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
           "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
           "DAGSTER_K8S_PIPELINE_RUN_NAMESPACE": "rlhf", "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "rlhf-run-env",
           "DAGSTER_COMPUTE_LOG_BUCKET": "rlhf-logs", "DAGSTER_COMPUTE_LOG_PREFIX": "dagster"}


def _yaml(path):
    return yaml.safe_load((REPO / path).read_text())


# The configs, offline ------------------------------------------------------------------------------------------


def test_the_postgres_configs_share_one_storage_block_and_the_rest_of_the_local_instance():
    local, k8s = _yaml("dagster.postgres.yaml"), _yaml("k8s/dagster.yaml")
    assert local["storage"] == k8s["storage"] and list(local["storage"]) == ["postgres"]
    assert {k: v for k, v in local.items() if k != "storage"} == _yaml("dagster.yaml")  # otherwise the SQLite one


@pytest.mark.parametrize("path", ["dagster.postgres.yaml", "k8s/dagster.yaml"])
def test_the_storage_reads_its_connection_from_the_environment(path, monkeypatch):
    storage = _yaml(path)["storage"]["postgres"]
    for key in PG_ENV:
        monkeypatch.delenv(key, raising=False)
    missing = process_config(pg_config(), storage)
    assert not missing.success and "DAGSTER_PG_HOST" in str(missing.errors)
    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)
    resolved = process_config(pg_config(), storage)
    assert resolved.success, resolved.errors
    url = make_url(pg_url_from_config(resolved.value))  # as dagster-postgres hands it to SQLAlchemy
    assert (url.drivername, url.host, url.port, url.username, url.password, url.database) == (
        "postgresql+psycopg2", "db.internal", 6432, "dagster", PG_ENV["DAGSTER_PG_PASSWORD"], "rlhf")


def test_the_kubernetes_instance_validates_against_the_schemas_of_the_classes_it_names(monkeypatch):
    for key, value in {**PG_ENV, **K8S_ENV}.items():
        monkeypatch.setenv(key, value)
    config, _ = dagster_instance_config(str(REPO / "k8s"))  # Dagster's instance schema
    assert config["run_retries"]["enabled"] is True and config["run_monitoring"]["enabled"] is True
    classes = {}
    for section in ("run_launcher", "compute_logs", "run_coordinator"):
        cls = class_from_code_pointer(config[section]["module"], config[section]["class"])
        processed = process_config(cls.config_type(), config[section]["config"])
        assert processed.success, (section, processed.errors)
        classes[cls.__name__] = processed.value
    launcher = classes["K8sRunLauncher"]
    assert launcher["instance_config_map"] == "dagster-instance" and launcher["job_namespace"] == "rlhf"
    assert launcher["postgres_password_secret"] == "dagster-postgresql-secret"  # → DAGSTER_PG_PASSWORD in run pods
    assert launcher["env_config_maps"] == ["rlhf-run-env"]
    assert classes["S3ComputeLogManager"]["bucket"] == "rlhf-logs"
    assert classes["QueuedRunCoordinator"]["tag_concurrency_limits"][0]["key"] == "rlhf/gpu-type"


def _snake(values):
    """The Helm chart's camelCase keys as dagster.yaml's snake_case ones."""
    if not isinstance(values, dict):
        return values
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): _snake(v) for k, v in values.items()}


def test_the_kubernetes_instance_has_the_knobs_the_helm_values_give_the_chart():
    """k8s/dagster.yaml is the instance for a deployment without the chart; the chart renders its own from
    k8s/values.yaml. The run queue, run monitoring, run retries and compute-log upload must not drift apart."""
    instance, values = _yaml("k8s/dagster.yaml"), _yaml("k8s/values.yaml")
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = instance["run_coordinator"]["config"]
    assert coordinator["max_concurrent_runs"] == queued["maxConcurrentRuns"]
    assert coordinator["tag_concurrency_limits"] == queued["tagConcurrencyLimits"]  # same keys in both
    assert instance["run_monitoring"] == _snake(daemon["runMonitoring"])
    assert instance["run_retries"] == _snake(daemon["runRetries"])
    s3 = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    assert instance["compute_logs"]["class"] == values["computeLogManager"]["type"]
    assert instance["compute_logs"]["config"]["upload_interval"] == s3["uploadInterval"]
    assert instance["telemetry"] == values["telemetry"]


# On a real server ----------------------------------------------------------------------------------------------


def _postgres_rows(server, sql, *args):
    connection = server.connect(os.environ["DAGSTER_PG_DB"])  # the postgres_instance fixture's database
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        connection.close()


@pytest.mark.slow
def test_the_data_pillar_and_a_release_decision_run_on_postgres(storage_root, postgres_instance, postgres_server):
    """The real data pillar and reward pillar (dataset, reward model, calibration and its three blocking checks) on
    the Postgres instance; the policies and OPE as stored stand-ins (training them is the release-chain test's
    job), so ppo_policy's KL check was never evaluated. The decision reads the check history from Postgres: the
    calibration's checks passed in the reward pillar's run, the KL check is not measured, and the gate rejects."""
    instance = postgres_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    storage = land_release(storage_root, instance, learnable_pairs())  # the data pillar for DAY, a release
    for name in (QUARANTINE_RATE, ROWS_CONSERVED):
        assert check_status(instance, "validated_pairs", name, DAY).status == "passed"
    thresholds = config()["resources"]  # the relaxed release_thresholds of the tiny release, for both runs
    reward = defs().resolve_job_def("reward_pillar").execute_in_process(  # all but drift_reference (not gated)
        partition_key=RELEASE, instance=instance, run_config=config(), raise_on_error=False,
        asset_selection=[dg.AssetKey(k) for k in ("preference_dataset", "reward_model", "rm_calibration")])
    assert reward.success, [e.message for e in reward.all_events if e.is_failure]
    stand_ins = {"sft_policy": ModelRef(artifact_id="sft", kind="sft_policy", dataset_id="d"),
                 "ppo_policy": PolicyRef(artifact_id="ppo", kind="ppo_policy", dataset_id="d"),
                 "ope_report": OPERef(report={}, log_uri="none", log_sha256="none"),
                 "adversarial_eval": AdversarialRef(report={})}
    for asset, ref in stand_ins.items():
        write_reference(storage, asset, RELEASE, ref)
    decided = defs().resolve_job_def("release_chain").execute_in_process(
        partition_key=RELEASE, instance=instance, raise_on_error=False, run_config={"resources": thresholds},
        asset_selection=[dg.AssetKey("deployment_decision")])
    assert decided.success, [e.message for e in decided.all_events if e.is_failure]

    # partitions read back from Postgres: the release, and the day preference_dataset pinned (the data pillar's
    # aggregated_labels materialization that wrote those bytes)
    assert instance.get_dynamic_partitions("release") == [RELEASE]
    (labels,) = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("aggregated_labels"), asset_partitions=[DAY]), limit=5).records
    (dataset,) = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("preference_dataset"), asset_partitions=[RELEASE]), limit=5).records
    (pinned,) = [r.data for r in dataset.asset_materialization.metadata["upstream_partitions"].value.records]
    assert (pinned["partition"], pinned["storage_id"], pinned["run_id"]) == (DAY, labels.storage_id, labels.run_id)

    # the gate's evidence, read from Postgres, and the decision it drove
    statuses = {s.name: s for s in blocking_check_statuses(instance, RELEASE)}
    for asset, check in CALIBRATION_BLOCKING_CHECKS:
        assert statuses[f"{asset}:{check}"].status == "passed"
        assert statuses[f"{asset}:{check}"].run_id == reward.run_id
    assert statuses[f"ppo_policy:{KL_WITHIN_BUDGET}"].status == "not measured"
    assert {statuses[f"{a}:{c}"].status for a, c in ADVERSARIAL_CHECKS} == {"not measured"}
    record = read_decision(storage, RELEASE)
    upstream = [{"check": s.name, "status": s.status, "detail": s.detail} for s in statuses.values()]
    assert record["inputs"]["upstream_checks"] == upstream
    calibration = read_reference(storage, "rm_calibration", RELEASE)
    expected = decide(GateInputs.from_release(stand_ins["ope_report"], stand_ins["ppo_policy"], calibration,
                                              upstream), ReleaseThresholds(**thresholds["release_thresholds"]["config"]))
    assert record["gates"] == expected.to_dict()["gates"] and record["verdict"] == expected.verdict == "reject"
    (gate,) = [g for g in record["gates"] if g["name"] == "upstream_checks"]
    assert KL_WITHIN_BUDGET in json.dumps(gate)

    # ... and it is Postgres that holds them (read with psycopg2, not through Dagster)
    runs = dict(_postgres_rows(postgres_server, "SELECT run_id, status FROM runs"))
    assert runs[reward.run_id] == runs[decided.run_id] == "SUCCESS" and len(runs) == 3
    executions = _postgres_rows(postgres_server,
                                "SELECT check_name, partition, execution_status, run_id FROM asset_check_executions "
                                "WHERE asset_key = %s ORDER BY check_name", dg.AssetKey("rm_calibration").to_string())
    assert executions == sorted((c, RELEASE, "SUCCEEDED", reward.run_id) for _, c in CALIBRATION_BLOCKING_CHECKS)
    assert _postgres_rows(postgres_server, "SELECT partitions_def_name, partition FROM dynamic_partitions") \
        == [("release", RELEASE)]


def _stand_in(asset, checks, fail=(), explode=()):
    """``asset`` with the real blocking check specs, passing per release partition unless told otherwise."""
    @dg.asset(name=asset, partitions_def=release_partitions, check_specs=[
        dg.AssetCheckSpec(c, asset=asset, blocking=True, partitions_def=release_partitions) for c in checks])
    def stand_in(context):
        if context.partition_key in explode:
            raise RuntimeError("boom before any check was evaluated")
        yield dg.Output(1)
        for c in checks:
            yield dg.AssetCheckResult(check_name=c, passed=context.partition_key not in fail)

    return stand_in


RM_CHECKS = [c for _, c in CALIBRATION_BLOCKING_CHECKS]
ADVERSARIAL = [c for _, c in ADVERSARIAL_CHECKS]
SCENARIO = ["good", "failed", "errored", "stale", "never"]


def _history_and_verdicts(instance):
    """One history on ``instance`` — all checks pass; the calibration fails; a rerun errors before its checks; the
    calibration is rematerialized without its checks; never run — and, per release, the gate's view of it and
    the verdict on otherwise passing evidence (run ids masked: they differ between instances)."""
    instance.add_dynamic_partitions("release", SCENARIO)

    def run(partition, **calibration):
        dg.materialize([_stand_in("rm_calibration", RM_CHECKS, **calibration),
                        _stand_in("ppo_policy", [KL_WITHIN_BUDGET]), _stand_in("adversarial_eval", ADVERSARIAL)],
                       instance=instance, partition_key=partition,
                       raise_on_error=False)

    for partition in ("good", "failed", "errored", "stale"):
        run(partition, fail={"failed"})
    run("errored", explode={"errored"})
    instance.report_runless_asset_event(dg.AssetMaterialization("rm_calibration", partition="stale"))
    view = {}
    for partition in SCENARIO:
        checks = [{"check": s.name, "status": s.status, "detail": re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<run>",
                                                                          s.detail)}
                  for s in blocking_check_statuses(instance, partition)]
        view[partition] = (checks, decide(dataclasses.replace(GOOD, upstream_checks=checks)).verdict)
    return view


@pytest.mark.slow
def test_the_gate_reads_the_same_check_history_from_postgres_as_from_sqlite(dagster_instance, postgres_instance):
    on_postgres = _history_and_verdicts(postgres_instance)
    assert on_postgres == _history_and_verdicts(dagster_instance)
    assert {p: verdict for p, (_, verdict) in on_postgres.items()} == {
        "good": "promote", "failed": "reject", "errored": "reject", "stale": "reject", "never": "reject"}
    statuses = {p: [c["status"] for c in checks] for p, (checks, _) in on_postgres.items()}
    assert statuses["good"] == ["passed"] * len(RELEASE_BLOCKING_CHECKS)
    assert statuses["failed"] == ["failed"] * len(RM_CHECKS) + ["passed"] * (1 + len(ADVERSARIAL))
    assert statuses["errored"][:len(RM_CHECKS)] == ["not measured"] * len(RM_CHECKS)
    assert "planned in run <run>" in on_postgres["errored"][0][0]["detail"]
    assert "older materialization" in on_postgres["stale"][0][0]["detail"]
    assert statuses["never"] == ["not measured"] * len(RELEASE_BLOCKING_CHECKS)
