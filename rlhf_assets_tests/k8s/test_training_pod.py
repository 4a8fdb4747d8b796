"""The Kubernetes mode of the training launcher: the pod PipesK8sClient would create (built here without a cluster,
through dagster-k8s's own pod builder) and the refusals that keep a training from starting where it cannot work."""

import dataclasses
import json

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
from dagster_k8s.pipes import build_pod_body

from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import (
    POLICY_PPO,
    REWARD_TRAIN,
    TRAINING_RETRY_POLICY,
    WORK_DIR_ENV,
    TrainingLauncherResource,
    k8s_run_arguments,
    launch_training,
    training_launcher_from_env,
)
from rlhf_assets.policy import entrypoint as policy_entrypoint
from rlhf_assets.reward import entrypoint as reward_entrypoint
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.training_pod import GPU_TYPE_TAG, TRAINING_CONFIG_ENV, TrainingPodSettings
from rlhf_assets.training_process import build_parser
from rlhf_assets_tests.k8s.k8s_support import GPU, KUBERNETES_VERSION, documents, gpu_problems

S3_ENV = {"RLHF_STORAGE_ROOT": "s3://rlhf-artifacts/prod"}
ARGS = ["--config", "/rlhf-work/w/config.json", "--out", "/rlhf-work/w", "--dataset-id", "d1"]


def k8s_settings(**overrides) -> TrainingPodSettings:
    base = {"mode": "kubernetes", "image": "registry.example.com/rlhf/rlhf-training:0.1.0", "gpus": 4,
            "gpu_type": "NVIDIA-H100-80GB-HBM3", "node_selector": ("pool=training",)}
    return TrainingPodSettings.from_dict({**base, **overrides})


def pod_manifest(settings: TrainingPodSettings, entrypoint=POLICY_PPO, args=ARGS) -> dict:
    """The pod PipesK8sClient.run would create with the launcher's arguments, as the API receives it (camelCase)."""
    kwargs = k8s_run_arguments(settings, entrypoint, args, S3_ENV)
    pipes_env = {"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"}  # what the Pipes session adds
    pod = build_pod_body(pod_name="dagster-run-1-ppo-policy", image=None, command=kwargs["command"],
                         env_vars={**pipes_env, **kwargs["env"]}, base_pod_meta=kwargs["base_pod_meta"],
                         base_pod_spec=kwargs["base_pod_spec"])
    # the API call names the kind; the body dagster-k8s builds leaves it out
    return {"apiVersion": "v1", "kind": "Pod", **kubernetes.client.ApiClient().sanitize_for_serialization(pod)}


def test_the_training_pod_is_a_valid_gpu_pod():
    pod = pod_manifest(k8s_settings())
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert gpu_problems(spec, 4) == []
    assert spec["restartPolicy"] == "Never"  # bare pods: the step's RetryPolicy restarts, not Kubernetes
    assert spec["nodeSelector"] == {"pool": "training", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["metadata"]["labels"][GPU_TYPE_TAG] == "NVIDIA-H100-80GB-HBM3"
    assert container["image"] == "registry.example.com/rlhf/rlhf-training:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RLHF_STORAGE_ROOT"] == "s3://rlhf-artifacts/prod" and env[WORK_DIR_ENV] == "/rlhf-work"
    assert env["DAGSTER_PIPES_CONTEXT"] == "ctx"
    assert {"secretRef": {"name": "rlhf-s3"}} in container["envFrom"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["work"] == "/rlhf-work" and volumes["work"]["persistentVolumeClaim"]["claimName"] == "rlhf-work"
    assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_the_gpu_check_fails_on_a_pod_without_its_gpu_limit():
    spec = pod_manifest(k8s_settings())["spec"]
    del spec["containers"][0]["resources"]["limits"][GPU]
    assert gpu_problems(spec, 4) == [f"limits[{GPU}] is None, not 4"]
    spec["tolerations"] = []
    assert len(gpu_problems(spec, 4)) == 2


def test_a_cpu_pod_asks_for_no_gpu():
    spec = pod_manifest(k8s_settings(gpus=0, gpu_type="any", tolerations=()))["spec"]
    resources = spec["containers"][0]["resources"]
    assert GPU not in resources["limits"] and GPU not in resources["requests"]
    assert spec["nodeSelector"] == {"pool": "training"}  # no GPU model to select


def _entrypoint_args(command: list[str], module: str) -> list[str]:
    return command[command.index(module) + 1:]


def test_the_policy_runs_under_torchrun_with_one_process_per_gpu():
    command = pod_manifest(k8s_settings(gpus=4))["spec"]["containers"][0]["command"]
    assert command[:4] == ["torchrun", "--standalone", "--nproc-per-node", "4"]
    assert command[4:6] == ["-m", POLICY_PPO.module]
    args = [*_entrypoint_args(command, POLICY_PPO.module), "--sft", "a", "--reward-model", "b", "--prompts", "p",
            "--eval-prompts", "e"]
    parsed = build_parser("policy", "", policy_entrypoint.COMMANDS).parse_args(args)  # the entry point takes them
    assert parsed.command == "ppo" and parsed.out == "/rlhf-work/w"
    one = pod_manifest(k8s_settings(gpus=1))["spec"]["containers"][0]["command"]
    assert one[:4] == ["python", "-m", POLICY_PPO.module, "ppo"]


def test_the_reward_model_runs_lightning_ddp_over_the_pods_gpus():
    command = pod_manifest(k8s_settings(gpus=4), REWARD_TRAIN, [*ARGS, "--pairs", "p"])["spec"]["containers"][0][
        "command"]
    assert command[:4] == ["python", "-m", REWARD_TRAIN.module, "train"]
    args = build_parser("rm", "", reward_entrypoint.COMMANDS).parse_args(_entrypoint_args(command, REWARD_TRAIN.module))
    from rlhf_assets.config_schema import load

    config = load(RMConfig, None, args)  # the flags override config.json and make a valid multi-GPU config
    assert (config.accelerator, config.devices, config.strategy) == ("gpu", 4, "ddp")


def test_a_local_storage_root_is_refused_for_a_pod():
    with pytest.raises(ValueError, match=r"needs an s3:// storage root .* not '/data/\.rlhf'"):
        k8s_run_arguments(k8s_settings(), POLICY_PPO, ARGS, {"RLHF_STORAGE_ROOT": "/data/.rlhf"})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("memory", "64GB", "not a Kubernetes quantity"),
    ("tolerations", ["nvidia.com/gpu"], "key\\[=value\\]:Effect"),
    ("node_selector", ["pool"], "not key=value"),
    ("gpu_type", "NVIDIA H100", "not a Kubernetes label value"),
    ("image", "", "needs the training image"),
    ("gpus", -1, "greater than or equal to 0"),
])
def test_bad_pod_settings_are_refused_with_the_field_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        k8s_settings(**{field: value})


def test_the_launcher_resource_reads_the_deployments_training_config(tmp_path, monkeypatch):
    """The ConfigMap's training.yaml (k8s/training-config.yaml) is what the resource gives the launcher."""
    (configmap,) = documents("training-config.yaml")
    path = tmp_path / "training.yaml"
    path.write_text(configmap["data"]["training.yaml"])
    monkeypatch.setenv(TRAINING_CONFIG_ENV, str(path))
    settings = training_launcher_from_env().settings()
    assert settings == TrainingPodSettings.from_file(path) and settings.mode == "kubernetes"
    assert settings.tolerations == ("nvidia.com/gpu:NoSchedule",)  # lists from YAML and Dagster config → tuples
    monkeypatch.delenv(TRAINING_CONFIG_ENV)
    assert training_launcher_from_env().settings() == TrainingPodSettings()  # the default: a subprocess


def _materialize_training(tmp_path, launcher: TrainingLauncherResource, storage: StorageResource,
                          pairs: bytes) -> dg.ExecuteInProcessResult:
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["r1"]), retry_policy=TRAINING_RETRY_POLICY)
    def trains(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource,
               storage: StorageResource):
        launch_training(context, training_launcher, storage, REWARD_TRAIN, RMConfig(), dataset_id="d1",
                        inputs={"--pairs": ("train.jsonl", pairs)})

    return dg.materialize([trains], partition_key="r1", raise_on_error=False,
                          resources={"training_launcher": launcher, "storage": storage})


def _failures(result) -> list[str]:
    return [e.event_specific_data.error.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def _retries(result) -> int:
    return sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_kubernetes_mode_refuses_a_local_root_before_staging_anything(tmp_path):
    settings = dataclasses.replace(k8s_settings(), work_mount_path=str(tmp_path / "work"))
    launcher = TrainingLauncherResource(**dataclasses.asdict(settings))
    result = _materialize_training(tmp_path, launcher, StorageResource(root=str(tmp_path / "store")), b"")
    assert not result.success
    (message,) = _failures(result)
    assert "needs an s3:// storage root" in message and str(tmp_path / "store") in message
    assert _retries(result) == 0  # a retry cannot fix it
    assert not (tmp_path / "work").exists()  # nothing staged


def test_an_entry_point_refusing_its_input_is_not_retried(tmp_path):
    """Exit code 2 (bad input) fails the step at once; the RetryPolicy is for processes and pods that were killed."""
    pair = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode() + b"\n"  # one pair: no hold-out
    result = _materialize_training(tmp_path, TrainingLauncherResource(), StorageResource(root=str(tmp_path / "s")),
                                   pair)
    assert not result.success
    (message,) = _failures(result)
    assert "refused its input" in message
    assert _retries(result) == 0


@pytest.mark.slow
def test_a_killed_training_is_retried_by_its_retry_policy_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """What a lost pod amounts to, on this machine: the training process is killed (SIGKILL) right after its first
    checkpoint; the step's RetryPolicy (the training assets', without the wait) runs it again, in the same work
    directory, and the entry point resumes from the checkpoint instead of starting over."""
    from rlhf_assets_tests.support import kill_children_once, make_pairs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    store = tmp_path / "store"
    pairs = "".join(json.dumps(r) + "\n" for r in make_pairs(40, seed=1)).encode()
    val = "".join(json.dumps(r) + "\n" for r in make_pairs(16, seed=2)).encode()
    # 40 pairs / batch 4 = 10 steps per epoch, 3 epochs; last.ckpt every 3 steps
    config = RMConfig(preset="tiny", epochs=3, batch_size=4, max_length=64, checkpoint_every_n_steps=3)
    reports = []

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["r1"]),
              retry_policy=TRAINING_RETRY_POLICY._replace(delay=0))
    def trains(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource,
               storage: StorageResource):
        run = launch_training(context, training_launcher, storage, REWARD_TRAIN, config, dataset_id="d1",
                              inputs={"--pairs": ("train.jsonl", pairs), "--val-pairs": ("val.jsonl", val)},
                              args=["--no-progress"])
        reports.append(run.reported)
        return dg.MaterializeResult()

    watcher, killed = kill_children_once(lambda: any(store.glob("work/**/checkpoints/last.ckpt")),
                                         REWARD_TRAIN.module, poll_s=0.005)
    result = dg.materialize([trains], partition_key="r1", raise_on_error=False,
                            resources={"training_launcher": TrainingLauncherResource(),
                                       "storage": StorageResource(root=str(store))})
    watcher.join(timeout=5)
    assert killed, "the training ended before it could be killed"
    assert result.success, _failures(result)
    assert _retries(result) == 1
    (reported,) = reports
    assert reported["resumed_from_step"] > 0 and reported["global_step"] == 30
