"""Every Kubernetes manifest under k8s/ is valid against the Kubernetes schemas (offline, kubernetes-validate,
strict: unknown fields refused), and says what the project needs: the service's probes, token and scaling; the
training ConfigMap the launcher loads; the work volume; the multi-node Job's rendezvous and GPUs."""

import copy

import kubernetes_validate
import pytest

from rlhf_assets.policy import entrypoint as policy_entrypoint
from rlhf_assets.serving.server import parser as serve_parser
from rlhf_assets.serving.settings import TOKEN_ENV, ServeSettings
from rlhf_assets.training_pod import GPU_TYPE_TAG, TrainingPodSettings
from rlhf_assets.training_process import build_parser
from rlhf_assets_tests.k8s.k8s_support import GPU, K8S, KUBERNETES_VERSION, documents, env_of, gpu_problems, one

#: Not manifests: the Helm chart's values and the Dagster instance config.
NOT_MANIFESTS = {"values.yaml", "dagster.yaml"}
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_MANIFESTS)


def test_there_are_manifests_to_check():
    assert {"reward-model-service.yaml", "training-config.yaml", "training-multinode.yaml",
            "work-volume.yaml"} <= set(MANIFESTS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_against_the_kubernetes_schemas(name):
    for doc in documents(name):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "rlhf", f"{name}: {doc['kind']} outside the rlhf namespace"


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda d: d["spec"].__setitem__("replicas", "two"), kubernetes_validate.ValidationError),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("readinessprobe", {}),
     kubernetes_validate.ValidationError),  # a misspelt field: strict validation refuses unknown fields
])
def test_validation_fails_on_a_broken_manifest(mutate, error):
    deployment = copy.deepcopy(one("reward-model-service.yaml", "Deployment"))
    mutate(deployment)
    with pytest.raises(error):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# ------------------------------------------------------------------------------------------ the reward-model service


def _serve_container() -> dict:
    (container,) = one("reward-model-service.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_service_binds_the_port_its_probes_and_service_use():
    container = _serve_container()
    assert container["command"][:2] == ["rlhf", "serve"]
    args = serve_parser().parse_args(container["command"][2:])
    from rlhf_assets.config_schema import load

    settings = load(ServeSettings, None, args)  # the flags `rlhf serve` would get, validated as it validates them
    (port,) = container["ports"]
    assert settings.host == "0.0.0.0" and settings.port == port["containerPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    (svc_port,) = one("reward-model-service.yaml", "Service")["spec"]["ports"]
    assert svc_port["targetPort"] == port["name"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_the_token_comes_from_a_secret_and_the_root_is_s3():
    env = env_of(_serve_container())
    assert env[TOKEN_ENV] == {"secretKeyRef": {"name": "rlhf-serve-token", "key": "token"}}
    assert env["RLHF_STORAGE_ROOT"].startswith("s3://")
    assert {"secretRef": {"name": "rlhf-s3"}} in _serve_container()["envFrom"]


def test_one_deployment_serves_production_and_canary_and_is_scaled_and_protected():
    deployments = [d for d in documents("reward-model-service.yaml") if d["kind"] == "Deployment"]
    assert len(deployments) == 1  # the canary is the registry's alias, routed inside every replica
    (deployment,) = deployments
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: selector.items() <= pod_labels.items()  # noqa: E731
    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one("reward-model-service.yaml", "Service")["spec"]["selector"])
    pdb = one("reward-model-service.yaml", "PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"]["matchLabels"])
    hpa = one("reward-model-service.yaml", "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert pdb["minAvailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]  # a drain never takes the last replica


# ------------------------------------------------------------------------------------------ training


def test_the_training_configmap_is_what_the_launcher_loads():
    configmap = one("training-config.yaml", "ConfigMap")
    import yaml

    settings = TrainingPodSettings.from_dict(yaml.safe_load(configmap["data"]["training.yaml"]))
    assert settings.mode == "kubernetes" and settings.gpus >= 1
    assert settings.image.rsplit(":", 1)[0].endswith("/rlhf-training")
    claim = one("work-volume.yaml", "PersistentVolumeClaim")
    assert settings.work_volume_claim == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # the run pod and the training pod mount it at once


def _multinode():
    job = one("training-multinode.yaml", "Job")
    service = one("training-multinode.yaml", "Service")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    flags = dict(a.split("=", 1) for a in container["command"] if a.startswith("--") and "=" in a)
    return job, service, container, flags


def test_the_multinode_job_meets_at_pod_zero_through_the_headless_service():
    job, service, container, flags = _multinode()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(flags["--nnodes"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    host, port = flags["--rdzv-endpoint"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # the Indexed Job's pod 0
    assert flags["--rdzv-backend"] == "c10d"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in container["ports"]}


def test_the_multinode_job_asks_for_the_gpus_torchrun_starts_processes_on():
    job, _, container, flags = _multinode()
    pod = job["spec"]["template"]["spec"]
    assert gpu_problems(pod, int(flags["--nproc-per-node"])) == []
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == job["spec"]["template"]["metadata"]["labels"][
        GPU_TYPE_TAG]
    assert GPU in container["resources"]["limits"]


def test_the_multinode_job_runs_the_policy_entry_point_with_flags_it_takes():
    _, _, container, _ = _multinode()
    command = container["command"]
    assert command[0] == "torchrun"
    module = command[command.index("-m") + 1]
    assert module == "rlhf_assets.policy.entrypoint"
    env = env_of(container)
    args = [a.replace("$(WORK)", env["WORK"]).replace("$(SFT)", env["SFT"])
            .replace("$(REWARD_MODEL)", env["REWARD_MODEL"]) for a in command[command.index("-m") + 2:]]
    parsed = build_parser("policy", "", policy_entrypoint.COMMANDS).parse_args(args)
    assert parsed.command == "ppo" and parsed.out == env["WORK"] and parsed.sft == env["SFT"]
    assert env["RLHF_STORAGE_ROOT"].startswith("s3://")
