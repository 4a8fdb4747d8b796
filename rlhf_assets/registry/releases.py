"""Release records: a release key, the cutoff date of the data it trains on, and its pinned dataset snapshot.

A release key looks like ``r20261126-2130``. Its record lives at ``<root>/registry/releases/<key>.json``. A key
added from the Dagster UI has no record: its cutoff is then read from the key's date (or today).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime

from rlhf_assets.storage import Storage

KEY_PATTERN = re.compile(r"^r(\d{8})-(\d{4})(?:-[a-z0-9]+)?$")


@dataclass(frozen=True)
class Release:
    key: str
    cutoff: str  # YYYY-MM-DD, inclusive: daily partitions on or before it are in the dataset
    created_at: str
    note: str = ""


def new_release_key(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("r%Y%m%d-%H%M")


def _record_path(storage: Storage, key: str):
    return storage.path("registry", "releases", f"{key}.json")


def validate_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", key):
        raise ValueError(f"release key {key!r}: use letters, digits, '.', '_' and '-' (e.g. r20261126-2130)")
    return key


def create_release(storage: Storage, key: str | None = None, cutoff: str | None = None, note: str = "") -> Release:
    """Write the release record (refuses to overwrite an existing release with a different cutoff)."""
    key = validate_key(key or new_release_key())
    cutoff = date.fromisoformat(cutoff).isoformat() if cutoff else default_cutoff(key)
    existing = find_release(storage, key)
    if existing is not None:
        if existing.cutoff != cutoff:
            raise ValueError(f"release {key} exists with cutoff {existing.cutoff}; releases are immutable")
        return existing
    release = Release(key=key, cutoff=cutoff, created_at=datetime.now(UTC).isoformat(), note=note)
    storage.write_json(_record_path(storage, key), asdict(release))
    return release


def default_cutoff(key: str) -> str:
    match = KEY_PATTERN.match(key)
    if match:
        return datetime.strptime(match.group(1), "%Y%m%d").date().isoformat()
    return datetime.now(UTC).date().isoformat()


def find_release(storage: Storage, key: str) -> Release | None:
    path = _record_path(storage, key)
    return Release(**storage.read_json(path)) if path.exists() else None


def get_release(storage: Storage, key: str) -> Release:
    """The record, or a record implied by the key (a partition added from the UI)."""
    return find_release(storage, key) or Release(key=key, cutoff=default_cutoff(key), created_at="", note="implicit")


def list_releases(storage: Storage) -> list[Release]:
    folder = storage.path("registry", "releases")
    records = [p for p in storage.list_files(folder)
               if p.name.endswith(".json") and not p.name.endswith(".dataset.json")]  # not the snapshot pointers
    return sorted((Release(**storage.read_json(p)) for p in records), key=lambda r: r.key)
