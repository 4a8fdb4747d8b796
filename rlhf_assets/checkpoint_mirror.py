"""Checkpoints mirrored to the storage root, so that a training process on a fresh machine — a retried Kubernetes pod
with an empty disk — resumes where the killed one stopped.

    mirror = CheckpointMirror(storage_from_env(), "reward_model/r1/0123abcd4567", work_dir)
    mirror.restore([work_dir / "run.json", work_dir / "checkpoints/last.ckpt"])   # at start, nothing local yet
    ...                                                                            # a checkpoint written locally
    mirror.push([work_dir / "run.json", work_dir / "checkpoints/last.ckpt"])      # rank 0, after every checkpoint

The training entry points get one from the scaffold (rlhf_assets/training_process.py, ``--checkpoint-key``); the
Dagster launcher passes the key of the training run (asset, partition and the hash of its inputs and config, the same
key as its work directory) whenever the storage root is not the local directory the work directory is in.

Layout under ``<root>/checkpoints/<key>/``:

    <version>/<file>      the files of one push (a fresh version name per push; never overwritten)
    latest.json           the pointer, written LAST: {"version", "files": {name: {"object", "sha256", "size"}}}

A push killed half-way has no pointer naming its files, so :meth:`CheckpointMirror.restore` never sees them, and the
next push deletes them. A file unchanged since the last push is not uploaded again (the pointer names the earlier
object). Downloads are checked against the pointer's sha256 and renamed into place in the order given — the file
whose presence means "a checkpoint is here" last — so a kill during a restore leaves no half checkpoint behind.
Everything goes through :class:`~rlhf_assets.storage.Storage` (retries with backoff on s3://). No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlhf_assets.storage import Storage, StorageUnavailable, synced_temp_beside

POINTER = "latest.json"
MIRROR_DIR = "checkpoints"


def check_key(key: str) -> str:
    """A run key is a relative path of plain segments (it names a folder under <root>/checkpoints/)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\\" in p for p in parts) or key.startswith("/"):
        raise ValueError(f"checkpoint key {key!r} must be a relative path like asset/partition/hash")
    return key


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointMirror:
    """The checkpoints of one training run (``key``) in the storage root, mirroring those in ``work`` (local)."""

    def __init__(self, storage: Storage, key: str, work: str | os.PathLike[str],
                 log: Callable[[str], None] | None = None):
        self.storage, self.key, self.work = storage, check_key(key), Path(work).resolve()
        self.remote = storage.path(MIRROR_DIR, *key.split("/"))
        self._say = log or (lambda msg: None)
        self._hashes: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, sha256): hash each file once
        self._pointer: dict[str, Any] | None = None  # what this process last pushed (or found)

    def __repr__(self) -> str:
        return f"CheckpointMirror({self.remote})"

    def _name(self, path: str | os.PathLike[str]) -> str:
        p = Path(path)
        return (p.resolve().relative_to(self.work) if p.is_absolute() else p).as_posix()

    # the pointer -----------------------------------------------------------------------------------------------
    def pointer(self) -> dict[str, Any] | None:
        """The last complete push (None: nothing mirrored yet)."""
        path = self.remote / POINTER
        if not self.storage.exists(path):
            return None
        return json.loads(self.storage.read_bytes(path))

    # push (rank 0, after a checkpoint was written locally) -------------------------------------------------------
    def push(self, files: Sequence[str | os.PathLike[str]]) -> dict[str, Any] | None:
        """Upload ``files`` (under the work directory; missing ones are left out) as a new version, then the pointer,
        then delete the objects no pointer names any more. Returns the pointer.

        When the store stays unavailable through its retries, the push is given up with a warning and training goes
        on (None): the local checkpoint is intact, the mirror keeps the previous one and the next push catches up —
        an outage costs at most the progress since the last push if the machine is also lost, never the run."""
        try:
            return self._push(files)
        except StorageUnavailable as exc:
            self._say(f"WARNING: checkpoint not mirrored (the previous one stays the resume point): {exc}")
            return None

    def _push(self, files: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
        previous = self._pointer if self._pointer is not None else self.pointer()
        before = (previous or {}).get("files", {})
        version = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        entries: dict[str, dict[str, Any]] = {}
        uploaded = 0
        for f in files:
            name = self._name(f)
            local = self.work / name
            if not local.is_file():
                continue
            st = local.stat()
            cached = self._hashes.get(name)
            sha = cached[2] if cached and cached[:2] == (st.st_size, st.st_mtime_ns) else file_sha256(local)
            self._hashes[name] = (st.st_size, st.st_mtime_ns, sha)
            if name in before and before[name]["sha256"] == sha:
                entries[name] = before[name]  # unchanged since the last push: the same object
                continue
            obj = f"{version}/{name}"
            self._upload(local, self.remote.joinpath(*obj.split("/")))
            entries[name] = {"object": obj, "sha256": sha, "size": st.st_size}
            uploaded += 1
        pointer = {"version": version, "files": entries}
        if uploaded or entries != before:
            self.storage.write_json(self.remote / POINTER, pointer)  # last: the push is now complete
            self._say(f"checkpoint mirrored to {self.remote} ({uploaded} file(s) uploaded)")
        else:
            pointer = previous or pointer
        self._pointer = pointer
        self._prune(pointer)
        return pointer

    def _upload(self, local: Path, target: Any) -> None:
        if self.storage.is_local:
            tmp = synced_temp_beside(os.fspath(target), lambda fh: _copy_into(local, fh))
            os.replace(tmp, os.fspath(target))
        else:
            self.storage.put_file(local, target)

    def _prune(self, pointer: dict[str, Any]) -> None:
        """Delete the objects the pointer does not name (replaced files, half-finished pushes). Best effort: a
        leftover costs space, not correctness."""
        keep = {entry["object"] for entry in pointer["files"].values()} | {POINTER}
        try:
            if self.storage.is_local:
                root = os.fspath(self.remote)
                for folder, _, names in os.walk(root, topdown=False):
                    for name in names:
                        path = os.path.join(folder, name)
                        if os.path.relpath(path, root).replace(os.sep, "/") not in keep:
                            os.unlink(path)
                    if folder != root and not os.listdir(folder):
                        os.rmdir(folder)
                return
            base = self.remote.path.rstrip("/") + "/"
            found = self.storage.retrying("list", self.remote, lambda: self.remote.fs.find(base))
            stale = [path for path in found if path[len(base):] not in keep]
            if stale:
                self.storage.retrying("delete", self.remote, lambda: self.remote.fs.rm(stale))
        except (OSError, StorageUnavailable) as exc:
            self._say(f"could not delete old mirrored checkpoints under {self.remote}: {exc}")

    # restore (at start, when the work directory holds no checkpoint) ----------------------------------------------
    def restore(self, files: Sequence[str | os.PathLike[str]]) -> bool:
        """Download the last complete push's ``files`` into the work directory, in the given order (put the file whose
        presence says "a checkpoint is here" last); files it does not hold are skipped. Returns whether the last of
        ``files`` was restored. Does nothing (False) when that file is already there or nothing is mirrored."""
        names = [self._name(f) for f in files]
        if not names or (self.work / names[-1]).exists():
            return False
        pointer = self.pointer()
        if pointer is None or names[-1] not in pointer["files"]:
            return False
        for name in names:
            entry = pointer["files"].get(name)
            if entry is None:
                continue
            self._download(self.remote.joinpath(*entry["object"].split("/")), self.work / name, entry["sha256"])
        self._pointer = pointer
        self._say(f"restored the checkpoint mirrored at {self.remote} (version {pointer['version']})")
        return True

    def _download(self, source: Any, local: Path, sha256: str) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        if self.storage.is_local:
            tmp = synced_temp_beside(os.fspath(local), lambda fh: _copy_into(Path(os.fspath(source)), fh))
        else:
            tmp = os.fspath(local.parent / f".{local.name}.tmp-{uuid.uuid4().hex}")
            self.storage.get_file(source, tmp)
        try:
            if file_sha256(Path(tmp)) != sha256:
                raise StorageUnavailable(f"the mirrored checkpoint file {source} does not match its sha256 in "
                                         f"{self.remote / POINTER}")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _copy_into(source: Path, fh: Any) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, fh, 1 << 20)
