"""Deployment aliases (``production``, ``canary``) and their append-only history. No Dagster.

Layout under ``<root>/registry/``::

    history/00000001.json   one file per change, created once and never rewritten:
                            {seq, id, time, alias, release, artifacts, share, action, reason, actor, from_release}
                            (an ``escalate`` entry moves nothing: a note for a person, with its ``evidence``)
    aliases.json            {"history_seq": N, "production": {...} | null, "canary": {...} | null}
    .lock                   local roots only: the writers' exclusive lock

**The history is the source of truth**; ``aliases.json`` is a cache of the state after entry ``history_seq``.
Every alias change first claims the next sequence number by *creating* its history file exclusively (exactly
one writer can create ``history/<seq>.json``), and only then rewrites the cache. A crash between the two leaves
the cache behind the history, so readers never trust it blindly: ``aliases()`` lists the history and replays the
entries newer than the cache (usually none), and the next writer rewrites the cache.

Concurrency:

- local roots: writers hold ``fcntl.flock`` on ``registry/.lock`` for the whole read-modify-write, history files
  are created with ``link(2)`` (atomic, fails if the name exists) and ``aliases.json`` is replaced atomically. So
  writers are serialized and the cache always ends at the last entry. (flock is per host; a root shared over NFS
  by several hosts still gets gap-free, duplicate-free history from the exclusive create, like s3 below.)
- ``s3://`` roots: no lock. The history file is created with a conditional PUT (``If-None-Match: *``), retried at
  the next seq on conflict; ``aliases.json`` is replaced with a compare-and-swap PUT (``If-Match: <etag>``) from a
  fresh replay, so the cache only ever moves forward and the last writer leaves it at the last entry. Both need an
  S3 that supports conditional writes (AWS since 2024-11, MinIO, moto >= 5.0; an old store that ignores the
  headers would silently lose the exclusivity). Every request to the store goes through the storage root's retry
  policy (rlhf_assets/storage.py) while the store is down; a conflict is an answer, never retried there.

A rollback is just ``set_alias("production", older_release, older_artifacts, action="rollback", ...)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from rlhf_assets.registry.releases import validate_key
from rlhf_assets.storage import Storage, synced_temp_beside

ALIASES = ("production", "canary")
ACTIONS = ("promote", "canary", "rollback", "override")  # what set_alias records; clear_alias records "clear"
#: Entries that do not put a release in an alias: a cleared alias, and an escalation (a note for a person).
NOT_A_MOVE = ("clear", "escalate")
MAX_ATTEMPTS = 100
_ENTRY_NAME = re.compile(r"^(\d{8,})\.json$")
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class RegistryConflict(RuntimeError):
    """Too many concurrent writers: the next history seq could not be claimed."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _empty_state() -> dict[str, Any]:
    return {alias: None for alias in ALIASES}


def apply_entry(state: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The alias state after one history entry (replay is a fold of this over the history)."""
    state = dict(state)
    if entry["action"] == "escalate":
        return state
    if entry["action"] == "clear":
        state[entry["alias"]] = None
    else:
        holder = {"release": entry["release"], "artifacts": dict(entry["artifacts"]), "since": entry["time"],
                  "history_seq": entry["seq"]}
        if entry["alias"] == "canary":
            holder["share"] = entry["share"]
        state[entry["alias"]] = holder
    return state


def _is_conflict(exc: BaseException) -> bool:
    """s3fs turns a failed conditional PUT into FileExistsError (If-None-Match) or OSError (If-Match)."""
    if isinstance(exc, FileExistsError):
        return True
    cause = getattr(exc, "__cause__", None)
    error = (getattr(cause, "response", None) or {}).get("Error", {})
    return str(error.get("Code", "")) in _CONFLICT_CODES


class Registry:
    """The ``production`` / ``canary`` aliases of one storage root, and the history of every change to them."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.base = storage.path("registry")
        self.history_dir = self.base / "history"
        self.cache_path = self.base / "aliases.json"

    def __repr__(self) -> str:
        return f"Registry({self.storage.uri!r})"

    # reading ------------------------------------------------------------------------------------------------
    def aliases(self) -> dict[str, dict[str, Any] | None]:
        """{"production": holder | None, "canary": holder | None}; a holder is {release, artifacts, since,
        history_seq} (+ share for canary). Always the state implied by the whole history, even if the cache lags."""
        return self._replay()[0]

    def current(self, alias: str) -> dict[str, Any] | None:
        return self.aliases()[_check_alias(alias)]

    def history(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (by seq)."""
        return self._read_entries(self._seqs())

    # writing ------------------------------------------------------------------------------------------------
    def set_alias(self, alias: str, release: str, artifacts: dict[str, str], *, action: str, reason: str,
                  actor: str, share: float | None = None) -> dict[str, Any]:
        """Point ``alias`` at ``release`` and its artifact ids; returns the new history entry.

        ``action`` says why (promote | canary | rollback | override); ``canary`` needs 0 < share <= 1 and only
        the canary alias takes a share. ``reason`` and ``actor`` (a person or a sensor/asset name) are required:
        the history is the audit trail.
        """
        _check_alias(alias)
        validate_key(release)
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: expected one of {', '.join(ACTIONS)} (use clear_alias to clear)")
        if action == "canary" and alias != "canary":
            raise ValueError("action 'canary' only applies to the canary alias")
        if alias == "canary":
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not (0 < share <= 1):
                raise ValueError(f"canary share must be a number with 0 < share <= 1, got {share!r}")
            share = float(share)
        elif share is not None:
            raise ValueError(f"only the canary alias takes a traffic share ({alias} got {share!r})")
        if not isinstance(artifacts, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                      for k, v in artifacts.items()):
            raise ValueError("artifacts must map names (reward_model, calibration, policy, ...) to artifact ids")
        return self._append({"alias": alias, "release": release, "artifacts": dict(artifacts), "share": share,
                             "action": action, **_who(reason, actor)})

    def clear_alias(self, alias: str, *, reason: str, actor: str) -> dict[str, Any] | None:
        """Point ``alias`` at nothing (e.g. end a canary); returns the entry, or None if it was already clear."""
        _check_alias(alias)
        return self._append({"alias": alias, "release": None, "artifacts": {}, "share": None, "action": "clear",
                             **_who(reason, actor)})

    def escalate(self, alias: str, release: str, *, reason: str, actor: str,
                  evidence: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record that ``release`` in ``alias`` needs a person's look (action ``escalate``, with its ``evidence``);
        the aliases do not move. Returns the entry."""
        _check_alias(alias)
        validate_key(release)
        return self._append({"alias": alias, "release": release, "artifacts": {}, "share": None,
                             "action": "escalate", "evidence": json.loads(json.dumps(evidence or {}, default=str)),
                             **_who(reason, actor)})

    # internals ----------------------------------------------------------------------------------------------
    def _append(self, change: dict[str, Any]) -> dict[str, Any] | None:
        """Claim the next seq by exclusive create (retrying on conflict), then bring the cache up to date."""
        with self._writer_lock():
            for attempt in range(MAX_ATTEMPTS):
                state, last, _ = self._replay()
                holder = state[change["alias"]]
                if change["action"] == "clear" and holder is None:
                    return None
                entry = {"seq": last + 1, "id": uuid.uuid4().hex, "time": _now(), **change,
                         "from_release": holder["release"] if holder else None}
                if self._create_entry(entry):
                    self._write_cache(apply_entry(state, entry), entry["seq"])
                    return entry
                time.sleep(random.uniform(0, 0.005 * min(attempt + 1, 20)))  # someone else won this seq
        raise RegistryConflict(f"could not claim a history seq in {self.history_dir} after {MAX_ATTEMPTS} tries")

    def _replay(self) -> tuple[dict[str, Any], int, int]:
        """(state, last seq, the cache's seq): the cache plus every history entry newer than it."""
        cache = self._read_cache()  # read BEFORE listing: an entry always exists before the cache mentions it
        seqs = self._seqs()
        last = seqs[-1] if seqs else 0
        if cache is not None and 0 < cache["history_seq"] <= last:
            state, seen = {a: cache.get(a) for a in ALIASES}, cache["history_seq"]
        else:  # no cache, or one that claims entries that do not exist: rebuild from the history alone
            state, seen = _empty_state(), 0
        for entry in self._read_entries([s for s in seqs if s > seen]):
            state = apply_entry(state, entry)
        return state, last, seen

    def _read_cache(self) -> dict[str, Any] | None:
        try:
            if self.storage.is_local:
                data = self.cache_path.read_bytes()
            else:  # one GET: s3fs's file reads re-check the etag and fail if a writer replaced the object
                data = self.storage.retrying("read", self.cache_path, lambda: self._fs.cat_file(self.cache_path.path))
            cache = json.loads(data)
        except (FileNotFoundError, ValueError):
            return None
        return cache if isinstance(cache, dict) and isinstance(cache.get("history_seq"), int) else None

    def _seqs(self) -> list[int]:
        if self.storage.is_local:
            try:
                names = os.listdir(os.fspath(self.history_dir))
            except FileNotFoundError:
                return []
        else:
            try:  # refresh=True: s3fs caches listings, and other writers append behind our back
                listed = self.storage.retrying("list", self.history_dir, lambda: self._fs.ls(
                    self.history_dir.path, detail=False, refresh=True))
                names = [p.rsplit("/", 1)[-1] for p in listed]
            except FileNotFoundError:
                return []
        return sorted(int(m.group(1)) for m in map(_ENTRY_NAME.match, names) if m)

    def _entry_path(self, seq: int):
        return self.history_dir / f"{seq:08d}.json"

    def _read_entries(self, seqs: list[int]) -> list[dict[str, Any]]:
        if not seqs:
            return []
        paths = [self._entry_path(s) for s in seqs]
        if self.storage.is_local:
            blobs = [p.read_bytes() for p in paths]
        else:  # concurrent plain GETs (fs.cat(list) would consult s3fs's listing cache, which can be stale)
            with ThreadPoolExecutor(max_workers=16) as pool:
                blobs = list(pool.map(self.storage.read_bytes, paths))
        return [json.loads(b) for b in blobs]

    @property
    def _fs(self):
        return self.base.fs

    def _create_entry(self, entry: dict[str, Any]) -> bool:
        """Create ``history/<seq>.json`` if and only if nobody has: True if this call created it."""
        path, data = self._entry_path(entry["seq"]), _dumps(entry)
        if self.storage.is_local:
            return _create_exclusive_local(os.fspath(path), data)
        try:  # PUT with If-None-Match: *; retried while the store is down, not when the name is taken
            self.storage.retrying("create", path, lambda: self._fs.pipe_file(path.path, data, mode="create"),
                                  final=_is_conflict)
            return True
        except Exception as exc:
            if not _is_conflict(exc):
                raise
        # The name is taken. It is still ours if a retried PUT (lost response) had in fact succeeded.
        try:
            return json.loads(self.storage.read_bytes(path)).get("id") == entry["id"]
        except FileNotFoundError:  # 409 ConditionalRequestConflict: a racing PUT had not landed yet
            return False

    def _write_cache(self, state: dict[str, Any], seq: int) -> None:
        if self.storage.is_local:  # under the writer lock: nobody can have written a newer cache
            self.storage.write_json(self.cache_path, {"history_seq": seq, **state})
            return
        # s3: compare-and-swap, so a slow writer never puts an older state over a newer one.
        fs, key = self._fs, self.cache_path.path
        for _ in range(MAX_ATTEMPTS):
            etag = self._etag(key)
            fresh, last, cached = self._replay()  # AFTER reading the etag: as new as any cache written so far
            if cached >= last:
                return  # someone already wrote this state (or a newer one)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                put = functools.partial(fs.pipe_file, key, _dumps({"history_seq": last, **fresh}), **condition)
                self.storage.retrying("write", self.cache_path, put, final=_is_conflict)
                return
            except Exception as exc:
                if not _is_conflict(exc):
                    raise
        # Not fatal: the entry is in the history, and readers replay past a lagging cache.

    def _etag(self, key: str) -> str | None:
        bucket, path, _ = self._fs.split_path(key)
        try:
            return self.storage.retrying("stat", self.cache_path, lambda: self._fs.call_s3(
                "head_object", Bucket=bucket, Key=path))["ETag"]
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """Local roots: an exclusive flock on registry/.lock for the read-modify-write. s3: nothing (see module)."""
        if not self.storage.is_local:
            yield
            return
        os.makedirs(os.fspath(self.base), exist_ok=True)
        fd = os.open(os.path.join(os.fspath(self.base), ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _create_exclusive_local(target: str, data: bytes) -> bool:
    """Write a temporary file, fsync it, then link(2) it to ``target``: atomic, and fails if ``target`` exists."""
    tmp = synced_temp_beside(target, data)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}: expected one of {', '.join(ALIASES)}")
    return alias


def _who(reason: str, actor: str) -> dict[str, str]:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a reason is required: the history is the audit trail")
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("an actor (who made the change: a person, sensor or asset) is required")
    return {"reason": reason.strip(), "actor": actor.strip()}
