"""Deployment decision records: ``<root>/registry/decisions/<release>.json``. No Dagster.

The ``deployment_decision`` asset writes one per release partition: at least ``{"release", "verdict",
"artifacts": {reward_model, calibration, policy, ...: artifact id}}`` plus whatever the gates report (reasons,
metrics). Promotion and rollback read the artifact ids from here, so moving an alias never needs to re-derive
which artifacts a release produced. Rematerializing the decision rewrites its record (atomically).
"""

from __future__ import annotations

from typing import Any

from rlhf_assets.registry.releases import validate_key
from rlhf_assets.storage import Storage

VERDICTS = ("promote", "canary", "reject", "escalate")


def _decision_path(storage: Storage, release: str):
    return storage.path("registry", "decisions", f"{validate_key(release)}.json")


def write_decision(storage: Storage, release: str, record: dict[str, Any]) -> dict[str, Any]:
    """Store a release's decision (``release`` is filled in; a different one in ``record`` is an error)."""
    record = dict(record)
    if record.setdefault("release", release) != release:
        raise ValueError(f"decision record names release {record['release']!r}, not {release!r}")
    if record.get("verdict") not in VERDICTS:
        raise ValueError(f"verdict {record.get('verdict')!r}: expected one of {', '.join(VERDICTS)}")
    artifacts = record.get("artifacts")
    if not isinstance(artifacts, dict) or not all(isinstance(v, str) for v in artifacts.values()):
        raise ValueError("a decision needs 'artifacts': {name: artifact id}")
    storage.write_json(_decision_path(storage, release), record)
    return record


def read_decision(storage: Storage, release: str) -> dict[str, Any] | None:
    """The release's decision record, or None if it has not been decided yet."""
    path = _decision_path(storage, release)
    return storage.read_json(path) if path.exists() else None


def list_decisions(storage: Storage) -> dict[str, dict[str, Any]]:
    """{release: decision record} for every decided release."""
    folder = storage.path("registry", "decisions")
    return {p.name[: -len(".json")]: storage.read_json(p) for p in storage.list_files(folder)
            if p.name.endswith(".json")}
