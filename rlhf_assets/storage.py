"""The storage root: a local directory or an ``s3://bucket/prefix``, its layout, and atomic writes.

Layout (DESIGN.md):
    <root>/landing/comparisons/date=YYYY-MM-DD/   annotation batches in
    <root>/tables/<asset>/<partition>.parquet     tables, with <partition>.manifest.json beside them
    <root>/quarantine/date=YYYY-MM-DD/            rejected files and rows, with their reasons
    <root>/artifacts/sha256/<digest>/             model artifacts
    <root>/registry/                              aliases and history

No Dagster here: the IO manager and resources in ``defs/`` wrap this.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO

import polars as pl
from upath import UPath

DEFAULT_ROOT = ".rlhf"
ROOT_ENV = "RLHF_STORAGE_ROOT"
S3_ENDPOINT_ENV = "RLHF_S3_ENDPOINT_URL"

LOCAL_PROTOCOLS = ("", "file", "local")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        root = str(root)
        self.storage_options = dict(storage_options or {})
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
        which is atomic by itself. Either way no reader ever sees a partial file under the final name.
        """
        if self.is_local:
            atomic_write_local(path, data)
        else:
            path.write_bytes(data)
        return sha256_bytes(data)

    def read_bytes(self, path: UPath) -> bytes:
        return path.read_bytes()

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
        return path.exists()

    def list_files(self, directory: UPath) -> list[UPath]:
        """Regular files directly under a directory, sorted by name, hidden/temporary files excluded."""
        if not directory.exists():
            return []
        return sorted(
            (p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name
        )

    def move(self, src: UPath, dst: UPath) -> None:
        """Move a file (rename locally; copy then delete on object stores)."""
        if self.is_local:
            os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
            os.replace(os.fspath(src), os.fspath(dst))
        else:
            self.write_bytes(dst, src.read_bytes())
            src.unlink()


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
