"""Launching a training entry point through Dagster Pipes, the same way for every model asset."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from rlhf_assets.defs.resources import StorageResource

WORK_DIR_ENV = "RLHF_WORK_DIR"


def work_dir(storage_root: str, asset: str, release: str, *key_parts: Any) -> Path:
    """Stable per (asset, release, inputs, config): a rerun after a crash finds its checkpoints and resumes."""
    key = hashlib.sha256(json.dumps(list(key_parts), sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = os.environ.get(WORK_DIR_ENV) or (storage_root if "://" not in storage_root else ".rlhf-work")
    return Path(base).resolve() / "work" / asset / release / key


def run_entrypoint(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient, storage: StorageResource,
                   module: str, args: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``python -m module args`` under Pipes; returns (plain reported values, the raw metadata)."""
    env = {"RLHF_STORAGE_ROOT": storage.root}
    if storage.s3_endpoint_url:
        env["RLHF_S3_ENDPOINT_URL"] = storage.s3_endpoint_url
    results = client.run(command=[sys.executable, "-m", module, *args], context=context, env=env).get_results()
    metadata = dict(results[-1].metadata) if results else {}
    reported = {k: v.value for k, v in metadata.items()}
    if "artifact_id" not in reported:
        raise dg.Failure(f"{module} finished without reporting an artifact")
    return reported, metadata


def numeric(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
