"""The compared pairs the service has scored, kept as a small index in the storage root
(``monitoring/served_pairs.parquet``: prompt hash, both response hashes in sorted order, the model's P(first wins),
the version and when), so human audits that land later can be joined with what the model said about the same texts
without reading the whole serving log again."""

from __future__ import annotations

import io

import polars as pl

from rlhf_assets.automation.correlation import served_pairs
from rlhf_assets.storage import Storage

INDEX = ("monitoring", "served_pairs.parquet")


def read_index(storage: Storage) -> pl.DataFrame:
    path = storage.path(*INDEX)
    return storage.read_parquet(path) if path.exists() else served_pairs(pl.DataFrame())


def add_to_index(storage: Storage, log_rows: pl.DataFrame) -> pl.DataFrame:
    """Index the compared pairs in ``log_rows`` (the newest serving of a pair by a version wins); returns the index."""
    index = read_index(storage)
    new = served_pairs(log_rows) if log_rows.height else index.head(0)
    if new.height:
        index = (pl.concat([index, new], how="diagonal_relaxed").sort("time")
                 .unique(["prompt_sha256", "first", "second", "artifact_id"], keep="last"))
        buffer = io.BytesIO()
        index.write_parquet(buffer)
        storage.write_bytes(storage.path(*INDEX), buffer.getvalue())
    return index
