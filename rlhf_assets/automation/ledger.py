"""What the automation did, kept in the storage root so every sensor (and a restarted daemon) sees it: the retrains
requested (one per episode: a cooldown after each) and the moves of the aliases it asked for.

``monitoring/automation/ledger.json``: {"retrains": [{time, release, trigger, evidence}], "moves": [...]}.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rlhf_assets.storage import Storage

LEDGER = ("monitoring", "automation", "ledger.json")


def read_ledger(storage: Storage) -> dict[str, list[dict[str, Any]]]:
    path = storage.path(*LEDGER)
    doc = storage.read_json(path) if path.exists() else {}
    return {"retrains": list(doc.get("retrains", [])), "moves": list(doc.get("moves", []))}


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def in_cooldown(storage: Storage, cooldown_s: float, now: datetime | None = None) -> dict[str, Any] | None:
    """The last retrain when it is less than ``cooldown_s`` old (another one would be the same episode), else None."""
    retrains = read_ledger(storage)["retrains"]
    if not retrains:
        return None
    last = retrains[-1]
    age = (_now(now) - datetime.fromisoformat(last["time"])).total_seconds()
    return last if age < cooldown_s else None


def record(storage: Storage, kind: str, entry: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Append ``entry`` (with its time) to ``retrains`` or ``moves``."""
    ledger = read_ledger(storage)
    entry = {"time": _now(now).isoformat(), **entry}
    ledger[kind].append(entry)
    storage.write_json(storage.path(*LEDGER), ledger)
    return entry
