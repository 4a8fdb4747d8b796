"""What the k8s/ tests share: the files, the Kubernetes version the manifests are validated against, and a pod
check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
#: A Kubernetes version kubernetes-validate carries schemas for, and current managed clusters run.
KUBERNETES_VERSION = "1.33.0"
GPU = "nvidia.com/gpu"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in documents(name) if d["kind"] == kind]
    return doc


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env as {name: value or valueFrom}."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def gpu_problems(pod_spec: dict[str, Any], gpus: int) -> list[str]:
    """What is wrong with a GPU pod spec (camelCase, as the API takes it): the first container must request and
    limit ``gpus`` GPUs (an extended resource: request = limit), tolerate the GPU taint, never restart."""
    problems = []
    resources = pod_spec["containers"][0].get("resources") or {}
    for part in ("limits", "requests"):
        value = (resources.get(part) or {}).get(GPU)
        if str(value) != str(gpus):
            problems.append(f"{part}[{GPU}] is {value!r}, not {gpus}")
    if not any(t.get("key") == GPU for t in pod_spec.get("tolerations") or []):
        problems.append(f"no toleration of the {GPU} taint")
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append(f"restartPolicy {pod_spec.get('restartPolicy')!r}")
    return problems
