"""Where the app's answers go: each stored on its own before it is acknowledged, then rotated into immutable landing
files that the landing sensor picks up once.

Why not append to a landing file: the landing sensor (automation/landing_watch.py) requests a run for every file
whose checksum it has not seen, so a file that grew with each answer would be re-requested at every change and
could be read half-written; and an S3 object cannot be appended to. Instead:

1. An answer is written atomically as ``annotation/answers/<comparison_id>.json`` (the comparison record, where it
   lands, when it was stored); only then is it acknowledged, so closing the browser loses nothing.
2. Rotation (``rotate_answers`` waiting, the oldest waiting ``rotate_seconds``, or shutdown) writes the waiting
   answers of one kind and day as a new file ``landing/<comparisons|audits>/date=<day>/annotate-<time>-<digest>
   .jsonl`` — atomically (a hidden temporary renamed into place locally, one PUT on S3) and never touched again.
   The sensor therefore only ever lists finished files, each of which it requests once.

Rotation is crash-safe without moving files: before a landing file is written, ``annotation/rotations/<name>.json``
lists its comparison ids with ``landed: false``; after it is written the record says ``landed: true``. On start a
record whose landing file exists is completed and one whose file does not is dropped (its answers are rotated
again), so every answer lands exactly once even when the app is killed in between.

Skips are ``annotation/skips/<assignment_id>.json`` with their reason: recorded, never comparisons.

The index (which ids are answered, skipped, landed) is this process's memory, loaded at start: run one app per
storage root.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

from rlhf_assets.preference.schema import FIELD_NAMES
from rlhf_assets.storage import Storage

ANSWERS_DIR = ("annotation", "answers")
SKIPS_DIR = ("annotation", "skips")
ROTATIONS_DIR = ("annotation", "rotations")
#: what makes two submissions of one comparison "the same answer" (timing may be measured anew on a retry)
ANSWER_FIELDS = ("label", "confidence", "rationale")


class AnswerConflict(Exception):
    """The assignment was already answered differently, or skipped (HTTP 409)."""


def landing_kind(item_kind: str) -> str:
    """The landing folder of an item kind: audits apart, everything else with the comparisons."""
    return "audits" if item_kind == "audit" else "comparisons"


class AnswerStore:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.lock = threading.RLock()
        self.answers: dict[str, dict[str, Any]] = {}  # comparison id → stored document
        self.skips: dict[str, dict[str, Any]] = {}
        self.landed: set[str] = set()
        self.waiting_since: dict[str, float] = {}  # not yet landed: id → monotonic time it was stored
        self.unsettled: dict[Any, dict[str, Any]] = {}  # rotation records written, not yet marked landed

    # start -----------------------------------------------------------------------------------------------------
    def open(self) -> AnswerStore:
        """Load the index and finish (or drop) a rotation a previous process left half-done."""
        with self.lock:
            for path in self.storage.list_files(self.storage.path(*ANSWERS_DIR)):
                doc = self.storage.read_json(path)
                self.answers[doc["record"]["comparison_id"]] = doc
            for path in self.storage.list_files(self.storage.path(*SKIPS_DIR)):
                doc = self.storage.read_json(path)
                self.skips[doc["assignment_id"]] = doc
            for path in self.storage.list_files(self.storage.path(*ROTATIONS_DIR)):
                self._settle(path, self.storage.read_json(path))
            now = time.monotonic()
            self.waiting_since = {i: now for i in self.answers if i not in self.landed}
        return self

    def _settle(self, path: Any, rotation: dict[str, Any]) -> None:
        """Count a rotation's answers as landed when its landing file exists (marking the record so), else drop the
        record: its answers wait for the next rotation."""
        if not rotation["landed"]:
            if not self.storage.exists(self.storage.path(*rotation["file"])):
                self.storage.retrying("delete", path, lambda: path.fs.rm_file(path.path))
                return
            self.storage.write_json(path, rotation | {"landed": True})
        self.landed.update(rotation["ids"])
        for cid in rotation["ids"]:
            self.waiting_since.pop(cid, None)

    # answers ---------------------------------------------------------------------------------------------------
    def status(self, assignment_id: str) -> str | None:
        """answered | skipped | None."""
        with self.lock:
            return "answered" if assignment_id in self.answers else "skipped" if assignment_id in self.skips else None

    def store_answer(self, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store one comparison record durably: (its acknowledgement, whether it is new). The same answer again gets
        the same acknowledgement; a different one for the same id, or an answer to a skipped item, AnswerConflict."""
        cid = record["comparison_id"]
        with self.lock:
            if cid in self.skips:
                raise AnswerConflict(f"assignment {cid} was skipped at {self.skips[cid]['skipped_at']} "
                                     f"({self.skips[cid]['reason']!r}); a skipped item cannot be answered")
            known = self.answers.get(cid)
            if known is not None:
                old = known["record"]
                if all(old.get(f) == record.get(f) for f in ANSWER_FIELDS):
                    return self.acknowledgement(cid), False
                raise AnswerConflict(
                    f"comparison {cid} was already answered at {old['created_at']} with label {old['label']!r}, "
                    f"confidence {old.get('confidence')!r}; answers are final, a different one is refused")
            doc = {"record": record, "landing": landing_kind(record.get("item_kind") or "pair"),
                   "day": record["created_at"][:10], "stored_at": datetime.now(UTC).isoformat()}
            self.storage.write_json(self.storage.path(*ANSWERS_DIR, f"{cid}.json"), doc)  # durable, then acknowledged
            self.answers[cid] = doc
            self.waiting_since[cid] = time.monotonic()
            return self.acknowledgement(cid), True

    def acknowledgement(self, cid: str) -> dict[str, Any]:
        record = self.answers[cid]["record"]
        return {"stored": True, "comparison_id": cid, "label": record["label"], "created_at": record["created_at"]}

    def store_skip(self, assignment_id: str, annotator_id: str, reason: str, day: str, item_kind: str
                   ) -> tuple[dict[str, Any], bool]:
        with self.lock:
            if assignment_id in self.answers:
                raise AnswerConflict(f"assignment {assignment_id} was already answered; it cannot be skipped")
            known = self.skips.get(assignment_id)
            if known is not None:
                if known["reason"] == reason:
                    return self._skip_ack(known), False
                raise AnswerConflict(f"assignment {assignment_id} was already skipped at {known['skipped_at']} "
                                     f"with reason {known['reason']!r}")
            doc = {"assignment_id": assignment_id, "annotator_id": annotator_id, "reason": reason, "day": day,
                   "item_kind": item_kind, "skipped_at": datetime.now(UTC).isoformat()}
            self.storage.write_json(self.storage.path(*SKIPS_DIR, f"{assignment_id}.json"), doc)
            self.skips[assignment_id] = doc
            return self._skip_ack(doc), True

    @staticmethod
    def _skip_ack(doc: dict[str, Any]) -> dict[str, Any]:
        return {"skipped": True, "assignment_id": doc["assignment_id"], "reason": doc["reason"],
                "skipped_at": doc["skipped_at"]}

    # rotation --------------------------------------------------------------------------------------------------
    def waiting(self) -> int:
        with self.lock:
            return len(self.waiting_since)

    def due(self, max_answers: int, max_seconds: float) -> bool:
        with self.lock:
            if not self.waiting_since:
                return False
            return (len(self.waiting_since) >= max_answers
                    or time.monotonic() - min(self.waiting_since.values()) >= max_seconds)

    def rotate(self) -> list[str]:
        """Write every waiting answer into new landing files, one per landing kind and day; the paths written.
        A rotation this process left unfinished (the store failed in between) is settled first, as at start."""
        with self.lock:
            for marker, rotation in list(self.unsettled.items()):
                self._settle(marker, rotation)
                del self.unsettled[marker]
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for cid in self.waiting_since:
                doc = self.answers[cid]
                groups.setdefault((doc["landing"], doc["day"]), []).append(doc["record"])
            written = []
            for (kind, day), records in sorted(groups.items()):
                records.sort(key=lambda r: (r["created_at"], r["comparison_id"]))
                ids = [r["comparison_id"] for r in records]
                digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
                name = f"annotate-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{digest}.jsonl"
                target = self.storage.landing_dir(day, kind).joinpath(name)
                rotation = {"file": ["landing", kind, f"date={day}", name], "ids": ids, "landed": False}
                marker = self.storage.path(*ROTATIONS_DIR, f"{kind}-{day}-{name}.json")
                self.storage.write_json(marker, rotation)
                self.unsettled[marker] = rotation  # until it is marked landed: settled again if anything fails
                body = "".join(json.dumps({k: r[k] for k in FIELD_NAMES if r.get(k) is not None},
                                          ensure_ascii=False) + "\n" for r in records)
                self.storage.write_bytes(target, body.encode("utf-8"))
                self._settle(marker, rotation)
                del self.unsettled[marker]
                written.append(str(target))
            return written
