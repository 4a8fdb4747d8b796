"""What the drift sensor has seen of each served version (``monitoring/drift/state.json``): windows checked, the
alarm flags of the newest ones (for the persistence rule) and the latest result. The correlation sensor reads it
before graduating a canary (its own traffic must have been checked without a persistent alarm)."""

from __future__ import annotations

from typing import Any

from rlhf_assets.storage import Storage

STATE = ("monitoring", "drift", "state.json")


def read_state(storage: Storage) -> dict[str, dict[str, Any]]:
    path = storage.path(*STATE)
    return storage.read_json(path) if path.exists() else {}


def write_state(storage: Storage, state: dict[str, dict[str, Any]]) -> None:
    storage.write_json(storage.path(*STATE), state)


def drift_ok(state: dict[str, dict[str, Any]], min_windows: int) -> dict[str, bool]:
    """artifact id → True when at least ``min_windows`` windows were checked and no persistent alarm stands."""
    return {a: s.get("windows", 0) >= min_windows and not s.get("alarm", False) for a, s in state.items()}
