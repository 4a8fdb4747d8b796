"""The storage root: a local directory or an ``s3://bucket/prefix``, its layout, and atomic writes.

Layout (DESIGN.md):
    <root>/landing/comparisons/date=YYYY-MM-DD/   annotation batches in
    <root>/tables/<asset>/<partition>.parquet     tables, with <partition>.manifest.json beside them
    <root>/quarantine/date=YYYY-MM-DD/            rejected files and rows, with their reasons
    <root>/artifacts/sha256/<digest>/             model artifacts
    <root>/registry/                              aliases and history
    <root>/checkpoints/<asset>/<partition>/<key>/ training checkpoints mirrored (rlhf_assets/checkpoint_mirror.py)

On ``s3://`` roots every write (and every read through this class) goes through :func:`with_retries`: bounded
attempts with exponential backoff and jitter (StorageSettings, from ``$RLHF_STORAGE_CONFIG``), then a
:class:`StorageUnavailable` that names the path. The S3 client's own retries are turned off so that this is the
one retry policy, and its listing cache too: sensors and the service run for days in one process and must see the
files other processes add.

No Dagster here: the IO manager and resources in ``defs/`` wrap this.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, BinaryIO, TypeVar

import polars as pl
from pydantic import Field
from upath import UPath

from rlhf_assets.config_schema import FileConfig, settings

DEFAULT_ROOT = ".rlhf"
ROOT_ENV = "RLHF_STORAGE_ROOT"
S3_ENDPOINT_ENV = "RLHF_S3_ENDPOINT_URL"
CONFIG_ENV = "RLHF_STORAGE_CONFIG"

LOCAL_PROTOCOLS = ("", "file", "local")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Seconds = Annotated[float, Field(gt=0)]
T = TypeVar("T")


@settings
class StorageSettings(FileConfig):
    """How an object-store root (s3://) rides out an outage: every write (and every read through Storage) is tried
    ``attempts`` times, waiting ``backoff_s``, then twice as long each time (up to ``backoff_max_s``), each wait
    drawn between half and all of that (jitter, so many writers do not retry in step)."""

    attempts: Annotated[int, Field(ge=1)] = 6
    """Tries of one S3 operation before it fails with StorageUnavailable (1: no retry)."""
    backoff_s: Seconds = 0.5
    """Wait before the second try; it doubles after every failed try."""
    backoff_max_s: Seconds = 8.0
    """Longest wait between two tries (the defaults give up after about 15 s)."""
    connect_timeout_s: Seconds = 5.0
    """How long one try waits to connect to the store."""
    read_timeout_s: Seconds = 60.0
    """How long one try waits for the store to answer."""

    CONFIG_LABEL = "storage"


def storage_settings_from_env() -> StorageSettings:
    """StorageSettings from the JSON/YAML file ``$RLHF_STORAGE_CONFIG`` names, else the defaults."""
    path = os.environ.get(CONFIG_ENV)
    return StorageSettings.from_file(path) if path else StorageSettings()


class StorageUnavailable(OSError):
    """The store did not take (or give) a file after every retry; the message names the path and the last error."""


#: Errors that say the request was refused for good; anything else from the store is worth another try.
PERMANENT_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
                    ValueError, TypeError)


def with_retries(what: str, path: Any, operation: Callable[[], T], policy: StorageSettings,
                 sleep: Callable[[float], None] = time.sleep,
                 final: Callable[[Exception], bool] = lambda exc: False) -> T:
    """``operation()``, retried on transient errors with exponential backoff and jitter; then StorageUnavailable.
    Errors in PERMANENT_ERRORS, and those ``final`` says are answers (a failed conditional PUT), are raised as
    they are, at once."""
    wait, started = policy.backoff_s, time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return operation()
        except PERMANENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, 5xx, throttling: all transient
            if final(exc):
                raise
            if attempt == policy.attempts:
                raise StorageUnavailable(
                    f"could not {what} {path}: the store failed {attempt} time(s) over "
                    f"{time.monotonic() - started:.1f} s; last error: {type(exc).__name__}: {exc}") from exc
            sleep(random.uniform(wait / 2, wait))
            wait = min(wait * 2, policy.backoff_max_s)
    raise AssertionError("unreachable")


def s3_client_options(policy: StorageSettings) -> dict[str, Any]:
    """s3fs options that leave retrying to :func:`with_retries` and always list afresh (see the module doc)."""
    return {"use_listings_cache": False,
            "config_kwargs": {"connect_timeout": policy.connect_timeout_s, "read_timeout": policy.read_timeout_s,
                              "retries": {"total_max_attempts": 1}}}


def storage_options_from_env() -> dict[str, Any]:
    """fsspec options for s3 roots: an endpoint for S3-compatible stores (MinIO, moto) when one is set."""
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    return {"endpoint_url": endpoint} if endpoint else {}



def synced_temp_beside(target: str, data: bytes | Callable[[BinaryIO], Any]) -> str:
    """Write ``data`` to a fresh hidden temporary file next to ``target`` and fsync it; returns its path. The
    caller renames (replace) or links (exclusive create) it into place, so readers never see a partial file.
    ``data`` is the bytes, or a function that writes them into the open file (``lambda fh: torch.save(obj, fh)``),
    so a large payload streams to disk instead of being held in memory whole."""
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_local(target: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], Any]) -> None:
    """Write a local file atomically (fsynced temporary beside it, then rename): a reader or a kill -9 sees the
    old file or the new one, never a partial one. ``data`` as for :func:`synced_temp_beside`. Every hand-written
    tmp-and-rename of a file in the package uses this."""
    target = os.fspath(target)
    tmp = synced_temp_beside(target, data)
    try:
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

class Storage:
    """Paths under one storage root plus the few operations the pipeline needs, for local and s3 roots alike."""

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                 policy: StorageSettings | None = None):
        root = str(root)
        self.policy = policy or storage_settings_from_env()
        self.storage_options = dict(storage_options or {})
        if root.startswith(("s3://", "s3a://")):
            self.storage_options = {**s3_client_options(self.policy), **self.storage_options}
        if "://" in root:
            self.root = UPath(root, **self.storage_options)
        else:
            self.root = UPath(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def uri(self) -> str:
        return str(self.root)

    @property
    def is_local(self) -> bool:
        return self.root.protocol in LOCAL_PROTOCOLS

    # layout -------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> UPath:
        return self.root.joinpath(*parts)

    def landing_dir(self, day: str, kind: str = "comparisons") -> UPath:
        return self.path("landing", kind, f"date={day}")

    def quarantine_dir(self, day: str) -> UPath:
        return self.path("quarantine", f"date={day}")

    def table_path(self, asset: str, partition: str | None = None) -> UPath:
        return self.path("tables", asset, f"{partition or '__all__'}.parquet")

    def reference_path(self, asset: str, partition: str | None = None) -> UPath:
        """Where an asset's small typed output (rlhf_assets/references.py) for a partition is kept, as JSON."""
        return self.path("tables", asset, f"{partition or '__all__'}.json")

    def manifest_path(self, asset: str, partition: str | None = None) -> UPath:
        return self.path("tables", asset, f"{partition or '__all__'}.manifest.json")

    # tables with manifests ----------------------------------------------------------------------------------
    def write_table(self, asset: str, partition: str | None, df: pl.DataFrame, **extra: Any) -> dict[str, Any]:
        """Write a table partition and then its manifest (so a manifest marks a complete table); returns it."""
        digest = self.write_parquet(self.table_path(asset, partition), df)
        manifest = table_manifest(asset, partition, digest, df.height, df.columns, **extra)
        self.write_json(self.manifest_path(asset, partition), manifest)
        return manifest

    def read_table_manifest(self, asset: str, partition: str | None) -> dict[str, Any] | None:
        """A table partition's manifest, None when it has none (never written, or not a table)."""
        path = self.manifest_path(asset, partition)
        return self.read_json(path) if path.exists() else None

    # operations ---------------------------------------------------------------------------------------------
    def write_bytes(self, path: UPath, data: bytes) -> str:
        """Write atomically and return the sha256 of the bytes.

        Local: write a hidden temporary file beside the target, fsync, then rename over it. S3: a single PUT,
        which is atomic by itself (retried as a whole). Either way no reader ever sees a partial file under the
        final name.
        """
        if self.is_local:
            atomic_write_local(path, data)
        else:
            self.retrying("write", path, lambda: path.fs.pipe_file(path.path, data))
        return sha256_bytes(data)

    def read_bytes(self, path: UPath) -> bytes:
        if self.is_local:
            return path.read_bytes()
        return self.retrying("read", path, lambda: path.fs.cat_file(path.path))

    def put_file(self, local: str | os.PathLike[str], path: UPath) -> None:
        """Upload a local file to an object-store path (one PUT, or a multipart upload completed as a whole)."""
        self.retrying("upload", path, lambda: path.fs.put_file(os.fspath(local), path.path))

    def get_file(self, path: UPath, local: str | os.PathLike[str]) -> None:
        """Download an object-store path to a local file."""
        self.retrying("download", path, lambda: path.fs.get_file(path.path, os.fspath(local)))

    def retrying(self, what: str, path: UPath, operation: Callable[[], T],
                 final: Callable[[Exception], bool] = lambda exc: False) -> T:
        """``operation`` under this root's retry policy (:func:`with_retries`)."""
        return with_retries(what, path, operation, self.policy, final=final)

    def write_json(self, path: UPath, obj: Any) -> str:
        return self.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, path: UPath) -> Any:
        return json.loads(path.read_bytes())

    def write_parquet(self, path: UPath, df: pl.DataFrame) -> str:
        """Write a table atomically; returns the sha256 of the file (stable for the same rows and polars)."""
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        return self.write_bytes(path, buf.getvalue())

    def read_parquet(self, path: UPath) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(path.read_bytes()))

    def exists(self, path: UPath) -> bool:
        return path.exists() if self.is_local else self.retrying("stat", path, path.exists)

    def list_files(self, directory: UPath) -> list[UPath]:
        """Regular files directly under a directory, sorted by name, hidden/temporary files excluded."""
        if not self.is_local:  # one LIST, not a HEAD per name
            return [row[0] for row in self.list_file_stats(directory)]
        if not directory.exists():
            return []
        return sorted(
            (p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name
        )

    def list_file_stats(self, directory: UPath) -> list[tuple[UPath, int, Any, str | None]]:
        """(path, size, modification time, the store's checksum: the S3 ETag, None locally) of the regular files
        directly under a directory, as :meth:`list_files` orders and filters them; one LIST request on S3."""
        if self.is_local:
            return [(p, (st := p.stat()).st_size, st.st_mtime_ns, None) for p in self.list_files(directory)]
        try:
            entries = self.retrying("list", directory, lambda: directory.fs.ls(directory.path, detail=True))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            if e.get("type") != "file" or name.startswith("."):
                continue
            modified = e.get("LastModified")
            etag = str(e.get("ETag") or "").strip('"') or None
            out.append((directory / name, int(e.get("size") or 0),
                        modified.timestamp() if hasattr(modified, "timestamp") else str(modified), etag))
        return sorted(out, key=lambda row: row[0].name)

    def move(self, src: UPath, dst: UPath) -> None:
        """Move a file (rename locally; copy then delete on object stores)."""
        if self.is_local:
            os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
            os.replace(os.fspath(src), os.fspath(dst))
        else:
            self.write_bytes(dst, self.read_bytes(src))
            self.retrying("delete", src, lambda: src.fs.rm_file(src.path))


def table_manifest(asset: str, partition: str | None, sha256: str, rows: int, columns: list[str],
                   **extra: Any) -> dict[str, Any]:
    """What a table partition holds: its content hash, rows, columns and the code that wrote it."""
    from rlhf_assets.code_version import code_version

    return {"asset": asset, "partition": partition, "sha256": sha256, "rows": rows, "columns": columns,
            "code_version": code_version(), **extra}


def storage_from_env(root: str | None = None) -> Storage:
    """The storage root named by ``root``, else ``$RLHF_STORAGE_ROOT``, else ``./.rlhf``."""
    root = root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Storage(root, storage_options_from_env() if "://" in root else None)
