"""The one way a model asset trains: stage its inputs, write its config, launch the entry point through Dagster
Pipes, read back the rank-0 report.

    run = launch_training(context, pipes_subprocess_client, storage, REWARD_TRAIN, config,
                          inputs={"--pairs": ("train.jsonl", train_bytes), ...}, dataset_id=..., parents=[...])
    return run.output(ModelRef(artifact_id=run.artifact_id, ...))

The work directory is stable per (asset, release, inputs, config), so a rerun after a crash finds the process's
checkpoints and resumes. The storage root reaches the process one way only, in its environment
(``RLHF_STORAGE_ROOT``, and ``RLHF_S3_ENDPOINT_URL`` when set). The client is the ``pipes_subprocess_client``
resource today; a Kubernetes pod client (PipesK8sClient) takes its place for GPU training.
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
from typing import Any

import dagster as dg

from rlhf_assets.defs.metadata import display
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.references import Reference
from rlhf_assets.storage import ROOT_ENV, S3_ENDPOINT_ENV

WORK_DIR_ENV = "RLHF_WORK_DIR"


@dataclass(frozen=True)
class Entrypoint:
    """A training command: ``python -m <module> <command>``, the asset (artifact kind) it makes."""

    module: str
    command: str


REWARD_TRAIN = Entrypoint("rlhf_assets.reward.entrypoint", "train")
POLICY_SFT = Entrypoint("rlhf_assets.policy.entrypoint", "sft")
POLICY_PPO = Entrypoint("rlhf_assets.policy.entrypoint", "ppo")


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


def work_dir(storage_root: str, asset: str, release: str, *key_parts: Any) -> Path:
    """Stable per (asset, release, inputs, config): a rerun after a crash finds its checkpoints and resumes."""
    key = hashlib.sha256(json.dumps(list(key_parts), sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = os.environ.get(WORK_DIR_ENV) or (storage_root if "://" not in storage_root else ".rlhf-work")
    return Path(base).resolve() / "work" / asset / release / key


def launch_training(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient, storage: StorageResource,
                    entrypoint: Entrypoint, config: Any, *, inputs: Mapping[str, tuple[str, bytes]],
                    dataset_id: str, parents: Sequence[str] = (), args: Sequence[str] = (),
                    key: Sequence[Any] = ()) -> TrainingRun:
    """Stage ``inputs`` ({flag: (file name, bytes)}; an empty file's flag is left out), write ``config`` (a settings
    dataclass) as config.json, run the entry point under Pipes and return its report. ``key`` adds what else makes
    this training distinct (e.g. the calibrator PPO trains against) to the work directory's key."""
    settings = dataclasses.asdict(config)
    asset = context.asset_key.to_user_string()
    work = work_dir(storage.root, asset, context.partition_key, dataset_id, list(parents), settings, *key)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(settings, indent=2, default=list))
    command = [sys.executable, "-m", entrypoint.module, entrypoint.command, "--config", str(work / "config.json"),
               "--out", str(work), "--dataset-id", dataset_id]
    for parent in parents:
        command += ["--parent", parent]
    for flag, (name, data) in inputs.items():
        (work / name).write_bytes(data)
        if data:
            command += [flag, str(work / name)]
    env = {ROOT_ENV: storage.root}
    if storage.s3_endpoint_url:
        env[S3_ENDPOINT_ENV] = storage.s3_endpoint_url
    results = client.run(command=[*command, *args], context=context, env=env).get_results()
    metadata = dict(results[-1].metadata) if results else {}
    reported = {k: v.value for k, v in metadata.items()}
    if "artifact_id" not in reported:
        raise dg.Failure(f"{entrypoint.module} {entrypoint.command} finished without reporting an artifact")
    return TrainingRun(reported, metadata, work)
