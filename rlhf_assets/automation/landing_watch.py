"""Which landing files are new or changed since the last look, per annotation day.

Every file is identified by its checksum (sha256 of the bytes locally; the ETag on S3, which the store computes
and lists with the names: one LIST per day, nothing downloaded to look). A day needs a run when it holds a file
whose checksum has not been requested before; the run key is the day plus a digest of those checksums, so each file
is processed once even when the daemon restarts (the state is the sensor's cursor). Files that disappear (ingest
moves unreadable ones to quarantine) request nothing. Local checksums of unchanged files (same size and
modification time) are not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from rlhf_assets.storage import Storage

DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass
class LandingState:
    """The cursor: what each file looked like (size, mtime, checksum) and which checksums were requested."""

    files: dict[str, list] = field(default_factory=dict)  # "day/name" → [size, mtime, checksum]
    requested: dict[str, list[str]] = field(default_factory=dict)  # day → checksums already requested

    def to_json(self) -> str:
        return json.dumps({"files": self.files, "requested": self.requested}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> LandingState:
        if not text:
            return cls()
        doc = json.loads(text)
        return cls(dict(doc.get("files", {})), {k: list(v) for k, v in doc.get("requested", {}).items()})


@dataclass(frozen=True)
class DayRequest:
    day: str
    files: list[str]  # the new or changed files
    checksums: list[str]

    @property
    def run_key(self) -> str:
        digest = hashlib.sha256("\n".join(sorted(self.checksums)).encode()).hexdigest()[:16]
        return f"landing:{self.day}:{digest}"


def scan(storage: Storage, state: LandingState, kind: str = "comparisons") -> tuple[list[DayRequest], LandingState]:
    """The days with new or changed files, and the cursor after requesting them."""
    base = storage.path("landing", kind)
    if not base.exists():
        return [], state
    files = dict(state.files)
    requested = {k: list(v) for k, v in state.requested.items()}
    out: list[DayRequest] = []
    for folder in sorted(base.iterdir(), key=lambda p: p.name):
        match = DAY_DIR.match(folder.name)
        if not match or not folder.is_dir():
            continue
        day = match.group(1)
        new_files, new_sums = [], []
        for path, size, mtime, etag in storage.list_file_stats(folder):  # on S3: one LIST per day, no GET
            key = f"{day}/{path.name}"
            known = files.get(key)
            if etag is not None:  # the store's own checksum, listed with the name: always current
                checksum = etag
            elif known and known[0] == size and known[1] == mtime:
                checksum = known[2]
            else:
                checksum = hashlib.sha256(storage.read_bytes(path)).hexdigest()
            files[key] = [size, mtime, checksum]
            if checksum not in requested.get(day, []):
                new_files.append(path.name)
                new_sums.append(checksum)
        if new_files:
            out.append(DayRequest(day, new_files, new_sums))
            requested.setdefault(day, []).extend(new_sums)
    return out, LandingState(files, requested)
