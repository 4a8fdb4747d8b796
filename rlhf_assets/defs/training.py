"""The one way a model asset trains: stage its inputs, write its config, launch the entry point through Dagster
Pipes, read back the rank-0 report.

    run = launch_training(context, training_launcher, storage, REWARD_TRAIN, config,
                          inputs={"--pairs": ("train.jsonl", train_bytes), ...}, dataset_id=..., parents=[...])
    return run.output(ModelRef(artifact_id=run.artifact_id, ...))

The work directory is stable per (asset, release, inputs, config), so a rerun after a crash finds the process's
checkpoints and resumes; on an s3:// root the process also mirrors its checkpoints to
``<root>/checkpoints/<asset>/<release>/<hash>/`` (``--checkpoint-key``, rlhf_assets/checkpoint_mirror.py), so a
rerun on another machine, with an empty work directory, resumes too. The storage root reaches the process one way only, in its environment
(``RLHF_STORAGE_ROOT``, and ``RLHF_S3_ENDPOINT_URL`` when set). The ``training_launcher`` resource says where the
process runs (rlhf_assets/training_pod.py TrainingPodSettings, from ``$RLHF_TRAINING_CONFIG``): a subprocess
(PipesSubprocessClient), or a Kubernetes pod with GPUs (PipesK8sClient) running the same entry point, its work
directory (the staged inputs) on a volume mounted at the same path in the run pod and the training pod. Kubernetes
never restarts such a pod: the training assets carry TRAINING_RETRY_POLICY, and the retried step's pod resumes from
the checkpoints mirrored in the storage root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # what PipesSubprocessClient raises (not public)

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.references import Reference
from rlhf_assets.storage import ROOT_ENV, S3_ENDPOINT_ENV
from rlhf_assets.training_pod import (
    GPU_TYPE_TAG,
    TRAINING_CONFIG_ENV,
    TrainingPodSettings,
    check_storage_root,
    pod_spec,
    training_command,
)

WORK_DIR_ENV = "RLHF_WORK_DIR"
#: Exit code of an entry point refusing its input (rlhf_assets/training_process.py): retrying cannot help.
BAD_INPUT_EXIT = 2

#: A killed process or pod (preempted node, OOM, lost GPU) is retried; the new one resumes from the checkpoints.
TRAINING_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                       jitter=dg.Jitter.PLUS_MINUS)


@dataclass(frozen=True)
class Entrypoint:
    """A training command: ``python -m <module> <command>``, and how it uses several GPUs of one pod."""

    module: str
    command: str
    multi_gpu: Literal["lightning", "torchrun"]


REWARD_TRAIN = Entrypoint("rlhf_assets.reward.entrypoint", "train", "lightning")
POLICY_SFT = Entrypoint("rlhf_assets.policy.entrypoint", "sft", "torchrun")
POLICY_PPO = Entrypoint("rlhf_assets.policy.entrypoint", "ppo", "torchrun")


class _TrainingLauncher(dg.ConfigurableResource):
    def settings(self) -> TrainingPodSettings:
        return settings_from(self, TrainingPodSettings)


TrainingLauncherResource = config_class(
    "TrainingLauncherResource", TrainingPodSettings, base=_TrainingLauncher,
    doc="Where the training entry points run: a subprocess here, or a Kubernetes pod with GPUs "
        "(rlhf_assets/training_pod.py TrainingPodSettings; a deployment sets it in $RLHF_TRAINING_CONFIG).")


def training_settings_from_env() -> TrainingPodSettings:
    """TrainingPodSettings from the JSON/YAML file ``$RLHF_TRAINING_CONFIG`` names (the defaults without it)."""
    path = os.environ.get(TRAINING_CONFIG_ENV)
    return TrainingPodSettings.from_file(path) if path else TrainingPodSettings()


def training_launcher_from_env() -> TrainingLauncherResource:
    return TrainingLauncherResource(**dataclasses.asdict(training_settings_from_env()))


def gpu_run_tags() -> dict[str, str]:
    """The run tag the QueuedRunCoordinator limits per GPU type (k8s/values.yaml), on every job that trains."""
    return {GPU_TYPE_TAG: training_settings_from_env().gpu_type}


@dataclass
class TrainingRun:
    """What the rank-0 process reported (plain values and Dagster metadata) and where it worked."""

    reported: dict[str, Any]
    metadata: dict[str, Any]
    work: Path

    @property
    def artifact_id(self) -> str:
        return str(self.reported["artifact_id"])

    @property
    def uri(self) -> str | None:
        return self.reported.get("artifact_uri")

    def metrics(self, prefixes: tuple[str, ...] | None = None) -> dict[str, float]:
        """The numeric values reported (optionally only those whose name starts with one of ``prefixes``)."""
        return {k: v for k, v in self.reported.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (prefixes is None or k.startswith(prefixes))}

    def output(self, ref: Reference, **metadata: Any) -> dg.Output:
        """The asset's output: what the process reported, for display (numbers rounded, lists of records as tables;
        ``reported`` and the reference keep full precision), plus ``metadata`` and the work directory."""
        return dg.Output(ref, metadata=display({**self.metadata, **metadata,
                                                "work_dir": dg.MetadataValue.path(str(self.work))}))


def run_key(asset: str, release: str, *key_parts: Any) -> str:
    """``asset/release/<hash of inputs and config>``: what names one training run, its work directory and its
    checkpoints mirrored in the storage root."""
    key = hashlib.sha256(json.dumps(list(key_parts), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{asset}/{release}/{key}"


def work_dir(storage_root: str, asset: str, release: str, *key_parts: Any, base: str | None = None) -> Path:
    """Stable per (asset, release, inputs, config): a rerun after a crash finds its checkpoints and resumes. Under
    ``base`` when given (the work volume in kubernetes mode), else ``$RLHF_WORK_DIR``, the local storage root or
    ./.rlhf-work."""
    base = base or os.environ.get(WORK_DIR_ENV) or (storage_root if "://" not in storage_root else ".rlhf-work")
    return Path(base).resolve() / "work" / run_key(asset, release, *key_parts)


def mirrors_checkpoints(storage_root: str) -> bool:
    """Whether a training run mirrors its checkpoints to the storage root: when the root is not a local directory.
    A local root holds the work directory itself (``<root>/work/…``), so a copy beside it would add nothing; an
    s3:// root outlives the machine (or pod) that trains."""
    return "://" in storage_root and not storage_root.startswith("file://")


def k8s_run_arguments(pod: TrainingPodSettings, entrypoint: Entrypoint, args: Sequence[str],
                      env: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of ``PipesK8sClient.run`` (besides the context) for one training: the pod's command,
    metadata and spec (rlhf_assets/training_pod.py), its environment, namespace and timeout. Refuses a storage root
    the pod cannot reach."""
    check_storage_root(env[ROOT_ENV])
    meta, spec = pod_spec(pod)
    return {"command": training_command(entrypoint.module, entrypoint.command, list(args), gpus=pod.gpus,
                                         multi_gpu=entrypoint.multi_gpu),
            "env": {**env, WORK_DIR_ENV: pod.work_mount_path}, "base_pod_meta": meta, "base_pod_spec": spec,
            "namespace": pod.namespace, "pod_wait_timeout": pod.pod_wait_timeout_s}


def launch_training(context: dg.AssetExecutionContext, launcher: _TrainingLauncher, storage: StorageResource,
                    entrypoint: Entrypoint, config: Any, *, inputs: Mapping[str, tuple[str, bytes]],
                    dataset_id: str, parents: Sequence[str] = (), args: Sequence[str] = (),
                    key: Sequence[Any] = ()) -> TrainingRun:
    """Stage ``inputs`` ({flag: (file name, bytes)}; an empty file's flag is left out), write ``config`` (a settings
    dataclass) as config.json, run the entry point under Pipes and return its report. ``key`` adds what else makes
    this training distinct (e.g. the calibrator PPO trains against) to the work directory's key."""
    pod = launcher.settings()
    kubernetes = pod.mode == "kubernetes"
    if kubernetes:
        try:
            check_storage_root(storage.root)  # before anything is staged
        except ValueError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
    settings = dataclasses.asdict(config)
    asset = context.asset_key.to_user_string()
    identity = (asset, context.partition_key, dataset_id, list(parents), settings, *key)
    work = work_dir(storage.root, *identity, base=pod.work_mount_path if kubernetes else None)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(settings, indent=2, default=list))
    command = ["--config", str(work / "config.json"), "--out", str(work), "--dataset-id", dataset_id]
    if mirrors_checkpoints(storage.root):  # a retried pod on another node resumes from the storage root
        command += ["--checkpoint-key", run_key(*identity)]
    for parent in parents:
        command += ["--parent", parent]
    for flag, (name, data) in inputs.items():
        (work / name).write_bytes(data)
        if data:
            command += [flag, str(work / name)]
    env = {ROOT_ENV: storage.root}
    if storage.s3_endpoint_url:
        env[S3_ENDPOINT_ENV] = storage.s3_endpoint_url
    if kubernetes:
        from dagster_k8s import PipesK8sClient

        run = PipesK8sClient().run(context=context, **k8s_run_arguments(pod, entrypoint, [*command, *args], env))
    else:
        try:
            run = dg.PipesSubprocessClient().run(
                command=[sys.executable, "-m", entrypoint.module, entrypoint.command, *command, *args],
                context=context, env=env)
        except DagsterPipesExecutionError as exc:
            if str(exc).endswith(f"failed with code {BAD_INPUT_EXIT}"):  # the entry point refused its input
                raise dg.Failure(f"{entrypoint.module} {entrypoint.command} refused its input (see its stderr above)",
                                 allow_retries=False) from exc
            raise
    results = run.get_results()
    metadata = dict(results[-1].metadata) if results else {}
    reported = {k: v.value for k, v in metadata.items()}
    if "artifact_id" not in reported:
        raise dg.Failure(f"{entrypoint.module} {entrypoint.command} finished without reporting an artifact")
    return TrainingRun(reported, metadata, work)
