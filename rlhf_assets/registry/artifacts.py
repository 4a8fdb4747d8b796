"""Content-addressed artifact store: ``<root>/artifacts/sha256/<digest>/`` with ``manifest.json`` inside.

The id (``digest``) is the sha256 over

1. the sorted list of (relative path, sha256) of the payload files (everything in the directory but
   ``manifest.json``), and
2. the canonical JSON (sorted keys, no whitespace) of the manifest minus its volatile fields
   (``VOLATILE_KEYS``: ``created_at``, the ``run`` section with wall times / throughput / host, and ``id``/``uri``),

so the same weights, config and metrics give the same id on every machine and every rerun, and anything that
changes what the artifact *is* changes the id.

Atomicity — a reader never sees half an artifact:

- local roots: the payload is copied into a hidden temporary directory next to the final one, fsynced, and
  ``os.rename``-d to ``<digest>`` (if it already exists the content is identical by construction: nothing to do);
- ``s3://`` roots: the payload is uploaded under the final prefix and ``manifest.json`` is written LAST, as the
  commit marker. Readers treat a prefix without ``manifest.json`` as absent, and only read the files the manifest
  names (checking their sha256). Every upload is retried through the storage root's policy
  (rlhf_assets/storage.py); if the store stays down the put fails with StorageUnavailable naming the file, the
  manifest is never written, and a later put of the same directory uploads it all again and commits it.

Model weights are safetensors only; nothing in the store is ever unpickled. No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf_assets.jsonsafe import json_plain
from rlhf_assets.storage import Storage

MANIFEST = "manifest.json"
VOLATILE_KEYS = frozenset({"created_at", "run", "id", "uri"})
CACHE_ENV = "RLHF_ARTIFACT_CACHE"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ArtifactNotFound(LookupError):
    """No artifact matches an id, prefix, directory or alias."""


@dataclass(frozen=True)
class ArtifactRef:
    id: str
    uri: str
    kind: str


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    """Plain JSON values (:func:`.jsonsafe.json_plain`: numpy scalars → python, NaN/inf → None, tuples → lists),
    torch scalars → python, paths → str, anything else → its str."""
    return json_plain(value, _other_jsonable)


def _other_jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # torch scalars
        return _jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def payload_files(local_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """[{"path", "sha256", "bytes"}] of every regular file under ``local_dir`` except a top-level manifest.json
    and hidden files, sorted by relative path (POSIX separators)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or any(part.startswith(".") for part in rel.split("/")):
            continue
        if path.is_symlink() or not path.is_file():
            if path.is_symlink():
                raise ValueError(f"{path}: symbolic links are not allowed in an artifact")
            continue
        out.append({"path": rel, "sha256": file_sha256(path), "bytes": path.stat().st_size})
    if not out:
        raise ValueError(f"{root} holds no files")
    return out


def artifact_digest(files: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    """sha256 over the sorted (path, sha256) list and the canonical manifest minus volatile fields."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        h.update(f"{f['path']}\0{f['sha256']}\n".encode())
    h.update(b"manifest\0")
    h.update(canonical_json(stable_manifest(manifest)))
    return h.hexdigest()


def stable_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in VOLATILE_KEYS}


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ArtifactStore:
    """Model artifacts under ``<storage root>/artifacts/sha256/``.

    ``put_dir(local_dir, kind=..., manifest=...) -> ArtifactRef``; ``get(id) -> local dir`` (downloaded into a
    cache for s3 roots, hashes verified); ``manifest(id)``; ``list(kind=None)`` newest first by ``created_at``;
    ``latest(kind)``; ``resolve("ID" | "ID-prefix" | "sha256:ID" | "DIR" | "latest", kind=None) -> local dir``.
    """

    def __init__(self, storage: Storage, cache_dir: str | os.PathLike[str] | None = None):
        self.storage = storage
        self.base = storage.path("artifacts", "sha256")
        cache = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlhf_assets" / "artifacts"
        self.cache_dir = Path(cache)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.storage.uri!r})"

    # writing ------------------------------------------------------------------------------------------------
    def put_dir(self, local_dir: str | os.PathLike[str], *, kind: str, manifest: dict[str, Any]) -> ArtifactRef:
        """Store a directory as one immutable artifact; identical content returns the existing one."""
        if not kind or not isinstance(kind, str):
            raise ValueError("kind must be a non-empty string")
        src = Path(local_dir)
        files = payload_files(src)
        full = dict(_jsonable(manifest))
        full["kind"] = kind
        full.setdefault("created_at", _now())
        full["files"] = files
        digest = artifact_digest(files, full)
        full["id"] = digest
        data = (json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        if self.exists(digest):
            return self._ref(digest, kind)
        if self.storage.is_local:
            self._put_local(src, files, digest, data)
        else:
            self._put_remote(src, files, digest, data)
        return self._ref(digest, kind)

    def _put_local(self, src: Path, files: list[dict[str, Any]], digest: str, manifest_bytes: bytes) -> None:
        base = Path(os.fspath(self.base))
        base.mkdir(parents=True, exist_ok=True)
        final = base / digest
        tmp = base / f".tmp-{digest[:16]}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for f in files:
                dst = tmp / f["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / f["path"], dst)
                if file_sha256(dst) != f["sha256"]:
                    raise OSError(f"{src / f['path']} changed while it was being stored")
            (tmp / MANIFEST).write_bytes(manifest_bytes)
            _fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MANIFEST).exists():  # not a concurrent writer of the same content
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _put_remote(self, src: Path, files: list[dict[str, Any]], digest: str, manifest_bytes: bytes) -> None:
        final = self.base / digest
        for f in files:
            self.storage.put_file(src / f["path"], final / f["path"])
        self.storage.write_bytes(final / MANIFEST, manifest_bytes)  # commit marker, written last
        self._fill_cache(src, files, digest, manifest_bytes)

    def _fill_cache(self, src: Path, files: list[dict[str, Any]], digest: str, manifest_bytes: bytes) -> None:
        """Seed the local cache with what was just uploaded, so ``get`` does not download it again."""
        cached = self.cache_dir / digest
        if (cached / MANIFEST).exists():
            return
        tmp = self.cache_dir / f".tmp-{digest[:16]}-{uuid.uuid4().hex}"
        try:
            for f in files:
                dst = tmp / f["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / f["path"], dst)
            (tmp / MANIFEST).write_bytes(manifest_bytes)
            os.rename(tmp, cached)
        except OSError:
            pass  # only a cache: get() downloads when it is missing
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # reading ------------------------------------------------------------------------------------------------
    def _ref(self, artifact_id: str, kind: str) -> ArtifactRef:
        return ArtifactRef(artifact_id, str(self.base / artifact_id), kind)

    def exists(self, artifact_id: str) -> bool:
        return bool(_HEX64.match(artifact_id)) and (self.base / artifact_id / MANIFEST).exists()

    def manifest(self, artifact_id: str) -> dict[str, Any]:
        artifact_id = self.resolve_id(artifact_id)
        return json.loads(self.storage.read_bytes(self.base / artifact_id / MANIFEST))

    def ref(self, artifact_id: str) -> ArtifactRef:
        m = self.manifest(artifact_id)
        return self._ref(m["id"], m.get("kind", ""))

    def get(self, artifact_id: str) -> Path:
        """A local directory holding the artifact (the store itself for local roots; a verified cache copy for s3)."""
        artifact_id = self.resolve_id(artifact_id)
        if self.storage.is_local:
            return Path(os.fspath(self.base / artifact_id))
        cached = self.cache_dir / artifact_id
        if (cached / MANIFEST).exists():
            return cached
        manifest = self.manifest(artifact_id)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".tmp-{artifact_id[:16]}-{uuid.uuid4().hex}"
        remote = self.base / artifact_id
        try:
            for f in manifest["files"]:
                dst = tmp / f["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                self.storage.get_file(remote / f["path"], dst)
                if file_sha256(dst) != f["sha256"]:
                    raise OSError(f"{remote / f['path']}: sha256 does not match the manifest")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            try:
                os.rename(tmp, cached)
            except OSError:
                if not (cached / MANIFEST).exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cached

    def verify(self, artifact_id: str) -> bool:
        """True when every payload file matches the manifest's sha256 and the id matches the content."""
        d = self.get(artifact_id)
        m = json.loads((d / MANIFEST).read_text())
        files = payload_files(d)
        return files == m["files"] and artifact_digest(files, m) == m["id"]

    def _ids(self) -> Iterator[str]:
        if not self.base.exists():
            return
        for p in self.base.iterdir():
            name = p.name
            if _HEX64.match(name) and (self.base / name / MANIFEST).exists():
                yield name

    def list(self, kind: str | None = None) -> list[ArtifactRef]:
        """Committed artifacts (of one kind), newest first by manifest ``created_at`` (then id)."""
        rows = []
        for artifact_id in self._ids():
            m = json.loads((self.base / artifact_id / MANIFEST).read_bytes())
            if kind is None or m.get("kind") == kind:
                rows.append((m.get("created_at") or "", artifact_id, m.get("kind", "")))
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
        return [self._ref(i, k) for _, i, k in rows]

    def latest(self, kind: str | None = None) -> ArtifactRef:
        refs = self.list(kind)
        if not refs:
            raise ArtifactNotFound(f"no {kind or ''} artifact in {self.base}".replace("  ", " "))
        return refs[0]

    def resolve_id(self, spec: str, kind: str | None = None) -> str:
        """The full id for ``ID``, ``sha256:ID``, a unique id prefix (>= 8 hex digits) or ``latest``."""
        spec = spec.strip()
        if spec == "latest":
            return self.latest(kind).id
        if spec.startswith("sha256:"):
            spec = spec[len("sha256:"):]
        spec = spec.lower()
        if self.exists(spec):
            return spec
        if re.fullmatch(r"[0-9a-f]{8,63}", spec):
            matches = [i for i in self._ids() if i.startswith(spec)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ArtifactNotFound(f"artifact id prefix {spec!r} is ambiguous ({len(matches)} artifacts)")
        raise ArtifactNotFound(f"no artifact {spec!r} in {self.base}")

    def resolve(self, spec: str | os.PathLike[str], kind: str | None = None) -> Path:
        """A local artifact directory for ``ID | ID-prefix | sha256:ID | DIR | latest``."""
        text = os.fspath(spec)
        if text != "latest" and Path(text).is_dir():
            return Path(text)
        try:
            return self.get(self.resolve_id(text, kind))
        except ArtifactNotFound as exc:
            raise ArtifactNotFound(f"{exc} (and {text!r} is not a directory)") from None
