"""An incremental index of files that keep landing in ``date=…`` folders: the rows parsed from each file, kept in
one parquet file in the storage root and brought up to date by reading only the files that are new or changed.

A caller that runs often over a growing tree (a sensor every 60 s over a year of audit files, a daily asset over
every earlier day's queue) lists the tree (one listing per folder, no file read), compares each file's
(size, modification time, store checksum) with what the index recorded and reads only the files whose entry
differs or is missing. A file rewritten under the same path replaces its rows (never counted twice); a file that
is gone takes its rows with it; a file added to an old day is picked up like any new one.

The index is one file, so what it says was read and the rows it holds are written together (atomically, by
Storage.write_parquet): every file has a marker row (``line`` −1) with its stats beside its parsed rows
(``line`` 0, 1, …). Two writers racing lose at most the other's update, which the next refresh reads again.
No Dagster here.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl
from upath import UPath

from rlhf_assets.storage import Storage

STAT_SCHEMA: dict[str, pl.DataType] = {"file": pl.String(), "size": pl.Int64(), "modified": pl.String(),
                                       "etag": pl.String(), "line": pl.Int64()}
MARKER = -1  # the ``line`` of a file's marker row


@dataclass(frozen=True)
class FileStat:
    """One listed file: its path relative to the storage root and what the listing says about its content."""

    file: str
    size: int
    modified: str
    etag: str | None


def dated_files(storage: Storage, *base: str, name: str | None = None) -> list[tuple[UPath, FileStat]]:
    """The files directly under ``<root>/<base>/date=…/`` (only those called ``name``, when given), folders and
    files in name order (the order a full read takes them in), with their stats: one listing per folder (on S3
    one LIST request each, no GET)."""
    folder = storage.path(*base)
    if not storage.exists(folder):
        return []
    root = str(storage.root).rstrip("/") + "/"
    out = []
    for day in sorted((p for p in folder.iterdir() if p.name.startswith("date=")), key=lambda p: p.name):
        for path, size, modified, etag in storage.list_file_stats(day):
            if name is None or path.name == name:
                if storage.is_local:  # no checksum; the inode: every atomic rewrite is a new file (same size and
                    etag = f"inode {os.stat(path).st_ino}"  # within the clock's tick too)
                out.append((path, FileStat(str(path).removeprefix(root), int(size), str(modified), etag)))
    return out


@dataclass
class FileIndex:
    """The index at ``<root>/<location>`` of the rows ``parse(path)`` reads from each file (columns ``schema``)."""

    storage: Storage
    location: tuple[str, ...]
    schema: dict[str, pl.DataType]
    parse: Callable[[UPath], pl.DataFrame]

    def read(self) -> pl.DataFrame:
        """The stored index; empty when there is none, or when it cannot be used (damaged, or written with other
        columns by another version of the code): it only caches the files, which are then read again."""
        path = self.storage.path(*self.location)
        empty = pl.DataFrame(schema={**STAT_SCHEMA, **self.schema})
        if not self.storage.exists(path):
            return empty
        data = self.storage.read_bytes(path)  # an unreachable store raises (StorageUnavailable): no rebuild then
        try:
            return pl.read_parquet(io.BytesIO(data)).select(list(empty.columns)).cast(empty.schema)
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            warnings.warn(f"{path}: unusable index ({type(exc).__name__}: {exc}); rebuilt from the files",
                          stacklevel=2)
            return empty

    def refresh(self, listed: Iterable[tuple[UPath, FileStat]]) -> pl.DataFrame:
        """Bring the index up to the ``listed`` files (dated_files) and return their rows: ``file``, ``line`` and
        the schema's columns, in file-then-line order. Reads only the files whose stats changed; writes the index
        only when something did."""
        listed = list(listed)
        index = self.read()
        markers = index.filter(pl.col("line") == MARKER)
        known = {r["file"]: (r["size"], r["modified"], r["etag"]) for r in markers.iter_rows(named=True)}
        current = {s.file: (s.size, s.modified, s.etag) for _, s in listed}
        unchanged = {f for f, stat in current.items() if known.get(f) == stat}
        fresh = [self._rows(path, stat) for path, stat in listed if stat.file not in unchanged]
        if fresh or set(known) - set(current) or not markers.height and index.height:
            index = pl.concat([index.filter(pl.col("file").is_in(list(unchanged))), *fresh], how="vertical_relaxed")
            index = self._ordered(index)
            self.storage.write_parquet(self.storage.path(*self.location), index)
        return self._ordered(index.filter(pl.col("line") != MARKER)).select("file", "line", *self.schema)

    def _rows(self, path: UPath, stat: FileStat) -> pl.DataFrame:
        rows = self.parse(path).select(list(self.schema)).cast(self.schema)
        stats: dict[str, Any] = {"file": stat.file, "size": stat.size, "modified": stat.modified,
                                 "etag": stat.etag}
        marker = pl.DataFrame({**{k: [v] for k, v in stats.items()}, "line": [MARKER]}, schema=STAT_SCHEMA)
        body = rows.with_columns(*(pl.lit(v, STAT_SCHEMA[k]).alias(k) for k, v in stats.items()),
                                 pl.int_range(pl.len(), dtype=pl.Int64).alias("line"))
        return pl.concat([marker, body], how="diagonal_relaxed").select(*STAT_SCHEMA, *self.schema)

    @staticmethod
    def _ordered(index: pl.DataFrame) -> pl.DataFrame:
        """Folder, then file name, then line: the order a full read in name order produces."""
        return index.sort(pl.col("file").str.replace(r"/[^/]*$", ""), pl.col("file").str.extract(r"([^/]*)$"),
                          "line", maintain_order=True)
