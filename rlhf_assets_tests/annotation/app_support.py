"""A storage root with a roster and a day's work queue, and a real `rlhf annotate` process on a free loopback port."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl

from rlhf_assets.annotation.queue import write_queue
from rlhf_assets.annotation.roster import Roster
from rlhf_assets.storage import Storage
from rlhf_assets_tests.support import LoopbackServer, start_on_loopback, subprocess_env


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def assignment(aid: str, annotator: str, item: str, kind: str = "pair", *, good: str = "a", day: str | None = None,
               prompt: str | None = None) -> dict:
    """One queued assignment. The better response says GOOD and the other BAD (``good`` says which is queued
    first); gold and attention items carry it as their expected label, in the queued orientation."""
    better, worse = f"GOOD answer to {item}: a clear, correct reply.", f"BAD answer to {item}: vague."
    if kind == "attention":
        better = f"GOOD: this is an attention check for {item}; choose this response."
    a, b = (better, worse) if good == "a" else (worse, better)
    return {"assignment_id": aid, "day": day or today(), "annotator_id": annotator, "item_id": item,
            "item_kind": kind, "prompt": prompt or f"Question about {item}?", "response_a": a, "response_b": b,
            "policy_a": "policy-1", "policy_b": "policy-2", "temperature": 0.7, "batch_id": f"batch-{item}",
            "expected_label": good if kind in ("gold", "attention") else None}


def write_assignments(root: Path | str | Storage, rows: list[dict], source: str = "pairs",
                      day: str | None = None) -> None:
    storage = root if isinstance(root, Storage) else Storage(str(root))
    write_queue(storage, day or today(), source, pl.DataFrame(rows))


def add_annotators(root: Path | str | Storage, *names: str, expires_days: float = 1.0) -> dict[str, str]:
    """Put the annotators on the roster: name → token."""
    roster = Roster(root if isinstance(root, Storage) else Storage(str(root)))
    return {name: roster.add(name, expires_days)[1] for name in names}


def add_expired(root: Path | str, name: str) -> str:
    roster = Roster(Storage(str(root)))
    return roster.add(name, 1.0, now=datetime.now(UTC) - timedelta(days=2))[1]


@dataclass
class AppServer(LoopbackServer):
    root: Path | str  # a directory, or an s3:// uri

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    @contextlib.contextmanager
    def signed_in(self, annotator: str, token: str) -> Iterator[httpx.Client]:
        with self.client() as client:
            response = client.post("/api/session", json={"annotator": annotator, "token": token})
            assert response.status_code == 200, response.text
            yield client

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.stderr else ""


def start_app(root: Path | str, *args: str, env: dict[str, str] | None = None) -> AppServer:
    """`python -m rlhf_assets.annotation.server --port 0 --root ROOT …`; returns once it answers /healthz."""
    process, url = start_on_loopback("rlhf_assets.annotation.server", "--root", str(root), *args,
                                     env=subprocess_env(**(env or {})), ready_path="/healthz", what="the app")
    return AppServer(process, url, root if "://" in str(root) else Path(root))


def landing_records(root: Path | str, kind: str = "comparisons") -> dict[str, list[dict]]:
    """Landing file name → its JSON records, for every day."""
    base = Path(root) / "landing" / kind
    return {str(p.relative_to(base)): [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in sorted(base.glob("date=*/*")) if not p.name.startswith(".")}
