"""k8s/values.yaml, the values for the official Dagster Helm chart: valid against the chart's values schema (the
subset this project sets, vendored), pinned to the Dagster version of pyproject.toml, and naming the images, ports,
secrets, volumes and the per-GPU-type run limit the rest of the project uses."""

import copy
import json
import re
import tomllib

import jsonschema
import pytest
import yaml

from rlhf_assets.definitions import defs
from rlhf_assets.defs.training import TRAINING_RETRY_POLICY
from rlhf_assets.training_pod import GPU_TYPE_TAG, TRAINING_CONFIG_ENV, TrainingPodSettings
from rlhf_assets_tests.k8s.k8s_support import K8S, REPO, documents, env_of, one

VALUES = yaml.safe_load((K8S / "values.yaml").read_text())
SCHEMA = json.loads((REPO / "rlhf_assets_tests" / "data" / "dagster_chart_values.subset.schema.json").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _deployment() -> dict:
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    return deployment


def _errors(values) -> list[str]:
    return [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)]


def test_values_are_valid_against_the_charts_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert _errors(VALUES) == []


@pytest.mark.parametrize(("path", "key", "value"), [
    (("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator"), "tagConcurrencyLimit", []),  # typo
    (("runLauncher",), "type", "K8sRunLaunchr"),
    (("computeLogManager", "config", "s3ComputeLogManager"), "bucketName", "x"),
])
def test_the_schema_refuses_a_misspelt_key_or_value(path, key, value):
    broken = copy.deepcopy(VALUES)
    node = broken
    for part in path:
        node = node[part]
    node[key] = value
    assert _errors(broken)


def test_the_chart_version_is_the_dagster_version_of_the_project():
    pins = dict(re.match(r"([\w-]+)==(.+)", d).groups() for d in PYPROJECT["project"]["dependencies"]
                if re.match(r"dagster(-k8s|-aws|-postgres)?==", d))
    (chart_version,) = set(re.findall(r"--version (\S+)", (K8S / "values.yaml").read_text()))
    assert chart_version == pins["dagster"]
    assert pins["dagster-k8s"] == pins["dagster-aws"] == pins["dagster-postgres"]  # the 0.x libraries of that release


def test_the_code_location_is_this_projects_image_and_module():
    deployment = _deployment()
    assert deployment["image"]["repository"].endswith("/rlhf-assets")
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", PYPROJECT["tool"]["dagster"]["module_name"]]
    assert deployment["port"] == 3030
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}  # run pods get its env, secrets, volumes
    assert {"name": "rlhf-s3"} in deployment["envSecrets"]
    assert env_of(deployment)["RLHF_STORAGE_ROOT"].startswith("s3://")


def test_run_pods_mount_the_training_config_and_the_work_volume_where_training_pods_do():
    deployment = _deployment()
    env = env_of(deployment)
    volumes = {v["name"]: v for v in deployment["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    configmap = one("training-config.yaml", "ConfigMap")
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    directory, _, file = env[TRAINING_CONFIG_ENV].rpartition("/")
    assert mounts[config_volume] == directory and file in configmap["data"]
    pod = TrainingPodSettings.from_dict(yaml.safe_load(configmap["data"][file]))
    work_volume = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    assert volumes[work_volume]["persistentVolumeClaim"]["claimName"] == pod.work_volume_claim
    assert mounts[work_volume] == pod.work_mount_path == env["RLHF_WORK_DIR"]


def test_external_postgres_from_a_secret():
    assert VALUES["postgresql"]["enabled"] is False and VALUES["postgresql"]["postgresqlHost"]
    assert VALUES["generatePostgresqlPasswordSecret"] is False  # the password is in our secret, not the values
    assert VALUES["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    assert "postgresqlPassword" not in VALUES["postgresql"]


def test_k8s_run_launcher_s3_compute_logs_and_the_daemon_retrying_and_monitoring_runs():
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert VALUES["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"]
    daemon = VALUES["dagsterDaemon"]
    assert daemon["runMonitoring"]["enabled"] is True and daemon["runRetries"]["enabled"] is True
    assert daemon["runRetries"]["maxRetries"] >= 1
    for component in (daemon, VALUES["dagsterWebserver"]):  # both read or write compute logs in S3
        assert {"name": "rlhf-s3"} in component["envSecrets"]


def test_at_most_n_runs_per_gpu_type_and_every_training_job_carries_the_tag():
    coordinator = VALUES["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator" and coordinator["enabled"] is True
    (limit,) = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert limit["key"] == GPU_TYPE_TAG and limit["value"] == {"applyLimitPerUniqueValue": True}
    assert limit["limit"] >= 1
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    trainers = {key for assets_def in graph.assets_defs if assets_def.is_executable and assets_def.node_def
                and assets_def.op.retry_policy == TRAINING_RETRY_POLICY for key in assets_def.keys}
    assert {k.to_user_string() for k in trainers} == {"reward_model", "judge_reward_model", "sft_policy",
                                                      "ppo_policy"}
    training_jobs = []
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__ASSET_JOB"):  # ad-hoc materializations: the README says to add the tag
            continue
        selected = job.asset_layer.selected_asset_keys if job.asset_layer else set()
        if selected & trainers:
            training_jobs.append(job.name)
            assert job.tags.get(GPU_TYPE_TAG) == TrainingPodSettings().gpu_type, job.name
    assert {"reward_pillar", "policy_pillar", "release_chain"} <= set(training_jobs)


def test_every_secret_the_values_and_manifests_name_is_one_the_readme_creates():
    readme = (REPO / "README.md").read_text()
    named = {s["name"] for s in _deployment()["envSecrets"]} | {VALUES["global"]["postgresqlSecretName"]}
    for name in ("reward-model-service.yaml", "training-multinode.yaml"):
        for doc in documents(name):
            text = yaml.safe_dump(doc)
            named |= set(re.findall(r"secretRef:\n\s+name: (\S+)", text))
            named |= set(re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)", text))
    assert named == {"rlhf-s3", "dagster-postgresql-secret", "rlhf-serve-token"}
    for secret in named:
        assert f"kubectl -n rlhf create secret generic {secret}" in readme, secret
