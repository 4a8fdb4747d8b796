"""Where a training entry point runs — a subprocess on this machine, or a Kubernetes pod with GPUs — declared once.

    settings = TrainingPodSettings(mode="kubernetes", image="registry/rlhf-training:1", gpus=4, gpu_type="H100")
    command = training_command("rlhf_assets.policy.entrypoint", "ppo", args, gpus=4, multi_gpu="torchrun")
    meta, spec = pod_spec(settings)

The pod runs the same entry point as the subprocess (``python -m rlhf_assets.reward.entrypoint train …``, ``… policy
.entrypoint sft|ppo …``); with several GPUs the reward model's Lightning launcher starts one process per GPU itself
(``--strategy ddp --devices N``) and the policy runs under ``torchrun --nproc-per-node N``. A pod is never restarted
by Kubernetes (Dagster Pipes creates bare pods): the Dagster step retries, and the new pod resumes from the
checkpoints the last one mirrored to the storage root (rlhf_assets/checkpoint_mirror.py), which must be ``s3://…``
(artifacts go there too). The work directory is a ReadWriteMany volume mounted at the same path in the Dagster run
pod, which stages the inputs there, and in the training pod; resuming does not depend on what it kept. The
Dagster side is rlhf_assets/defs/training.py; no Dagster here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

#: The run tag the QueuedRunCoordinator limits per value (k8s/values.yaml tagConcurrencyLimits) and the pod label.
GPU_TYPE_TAG = "rlhf/gpu-type"
#: A JSON or YAML file of TrainingPodSettings fields (in Kubernetes: a ConfigMap mounted into the code location).
TRAINING_CONFIG_ENV = "RLHF_TRAINING_CONFIG"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER_NAME = "training"
WORK_VOLUME = "work"

# Kubernetes resource quantities (the API's own grammar, simplified: decimal numbers with an SI/binary suffix).
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
# Label values: at most 63 characters, alphanumerics with -_. inside.
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
#: A list from a JSON/YAML file or the Launchpad becomes the tuple.
Strings = Annotated[tuple[str, ...], Field(strict=False)]


@settings
class TrainingPodSettings(FileConfig):
    """Where the training entry points run (reward model, SFT, PPO): this machine, or a Kubernetes pod."""

    mode: Literal["subprocess", "kubernetes"] = "subprocess"
    """subprocess: a child process on the machine that runs the Dagster step; kubernetes: a pod through Dagster
    Pipes (PipesK8sClient) with the resources below."""
    image: str = ""
    """The training image (k8s/Dockerfile.training, CUDA torch); required in kubernetes mode."""
    namespace: str | None = None
    """Namespace of the training pods (default: the run pod's own)."""
    service_account: str | None = None
    """Service account of the training pods (e.g. one with S3 access through workload identity)."""
    gpus: Annotated[int, Field(ge=0, le=64)] = 1
    """GPUs of one training pod (nvidia.com/gpu requests and limits); more than one: Lightning DDP for the reward
    model, torchrun for the policy, one process per GPU. 0: a CPU pod."""
    gpu_type: str = "any"
    """The GPU model: the value of the run tag rlhf/gpu-type (runs per value are limited by the QueuedRunCoordinator)
    and, unless `any`, of the node label `gpu_node_label` the pod is scheduled by."""
    gpu_node_label: str = "nvidia.com/gpu.product"
    """The node label that names a node's GPU model (NVIDIA GPU Feature Discovery sets nvidia.com/gpu.product)."""
    node_selector: Strings = ()
    """More node labels the pod needs, as `key=value`."""
    tolerations: Strings = ("nvidia.com/gpu:NoSchedule",)
    """Taints the pod tolerates, in kubectl's syntax `key[=value]:Effect` (GPU node pools are usually tainted)."""
    cpu: str = "8"
    """CPU request of the pod (a Kubernetes quantity)."""
    memory: str = "64Gi"
    """Memory request and limit of the pod (a Kubernetes quantity)."""
    shm_size: str = "16Gi"
    """Size of /dev/shm (memory-backed): NCCL and data-loader workers share tensors through it."""
    work_volume_claim: str = "rlhf-work"
    """PersistentVolumeClaim (ReadWriteMany, k8s/work-volume.yaml) of the work directories: the inputs the run pod
    stages for the training pod, and the local checkpoints (a retried pod resumes from their copy in the storage
    root, rlhf_assets/checkpoint_mirror.py). Mounted at the same path in the run pods (k8s/values.yaml)."""
    work_mount_path: str = "/rlhf-work"
    """Where the work volume is mounted, in the run pod and the training pod alike."""
    env_secrets: Strings = ("rlhf-s3",)
    """Secrets whose keys become the pod's environment (S3 credentials: AWS_ACCESS_KEY_ID, …)."""
    pod_wait_timeout_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    """How long the step waits for the pod to finish before it fails (and retries)."""

    CONFIG_LABEL = "training pod"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"TrainingPodSettings.{field}: {why}")

        for field in ("cpu", "memory", "shm_size"):
            if not _QUANTITY.match(getattr(self, field)):
                raise bad(field, f"{getattr(self, field)!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
        if not _LABEL_VALUE.match(self.gpu_type) or not self.gpu_type:
            raise bad("gpu_type", f"{self.gpu_type!r} is not a Kubernetes label value (letters, digits, -_., "
                                  "at most 63 characters)")
        for item in self.node_selector:
            key, sep, value = item.partition("=")
            if not sep or not key or not _LABEL_VALUE.match(value):
                raise bad("node_selector", f"{item!r} is not key=value")
        for item in self.tolerations:
            parse_toleration(item)  # raises with the item named
        if not self.work_mount_path.startswith("/"):
            raise bad("work_mount_path", f"{self.work_mount_path!r} is not an absolute path")
        if self.mode == "kubernetes" and not self.image:
            raise bad("image", "kubernetes mode needs the training image (k8s/Dockerfile.training)")

    def node_labels(self) -> dict[str, str]:
        labels = dict(item.split("=", 1) for item in self.node_selector)
        if self.gpu_type != "any":
            labels[self.gpu_node_label] = self.gpu_type
        return labels


def parse_toleration(text: str) -> dict[str, str]:
    """``key[=value]:Effect`` (kubectl taint syntax) → a Toleration (``Exists`` without a value)."""
    spec, sep, effect = text.rpartition(":")
    if not sep or effect not in _EFFECTS or not spec:
        raise ValueError(f"TrainingPodSettings.tolerations: {text!r} is not key[=value]:Effect with Effect one of "
                         f"{', '.join(_EFFECTS)}")
    key, has_value, value = spec.partition("=")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def check_storage_root(root: str) -> None:
    """A training pod can only reach a storage root every pod can reach: an s3:// one."""
    if not root.startswith("s3://"):
        raise ValueError(f"training in kubernetes mode needs an s3:// storage root (RLHF_STORAGE_ROOT), not {root!r}: "
                         "a local directory exists only on the machine of the Dagster step, the training pod would "
                         "write its artifact where nothing else can read it")


def training_command(module: str, command: str, args: list[str], *, gpus: int,
                     multi_gpu: Literal["lightning", "torchrun"]) -> list[str]:
    """The pod's command: ``python -m module command args`` on one GPU (or none); with several, the reward model's
    Lightning launcher starts the ranks (``--strategy ddp --devices N``, flags that override the config file) and
    the policy runs under ``torchrun --standalone --nproc-per-node N``."""
    if gpus <= 1:
        return ["python", "-m", module, command, *args, *(["--accelerator", "gpu"] if gpus and
                                                          multi_gpu == "lightning" else [])]
    if multi_gpu == "lightning":
        return ["python", "-m", module, command, *args, "--accelerator", "gpu", "--devices", str(gpus),
                "--strategy", "ddp"]
    return ["torchrun", "--standalone", "--nproc-per-node", str(gpus), "-m", module, command, *args]


def pod_spec(settings: TrainingPodSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod metadata, pod spec) for PipesK8sClient (``base_pod_meta``, ``base_pod_spec``; the client adds the name,
    the command and the Pipes environment): GPUs requested and limited, scheduled on the GPU type's nodes, the work
    volume and a memory-backed /dev/shm, the secrets' keys as environment, never restarted by Kubernetes."""
    requests: dict[str, str] = {"cpu": settings.cpu, "memory": settings.memory}
    limits: dict[str, str] = {"memory": settings.memory}
    if settings.gpus:  # extended resources: the request must equal the limit
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(settings.gpus)
    container = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": WORK_VOLUME, "mountPath": settings.work_mount_path},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        "envFrom": [{"secretRef": {"name": name}} for name in settings.env_secrets],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": WORK_VOLUME, "persistentVolumeClaim": {"claimName": settings.work_volume_claim}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}],
        "tolerations": [parse_toleration(t) for t in settings.tolerations],
    }
    if settings.node_labels():
        spec["nodeSelector"] = settings.node_labels()
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    meta = {"labels": {"app.kubernetes.io/name": "rlhf-training", "app.kubernetes.io/part-of": "rlhf-assets",
                       GPU_TYPE_TAG: settings.gpu_type}}
    return meta, spec
