"""The human audits, kept as an incremental index in the storage root (``monitoring/audit_rows.parquet``: the
parsed judgements of every file under ``landing/audits/date=…/``, with the file and its size, modification time
and checksum): the correlation sensor's 60-s tick reads only the audit files that are new or changed since the
last tick (rlhf_assets/file_index.py), not a year of them."""

from __future__ import annotations

import polars as pl

from rlhf_assets.automation.correlation import AUDIT_SCHEMA, AUDITS, parse_audits
from rlhf_assets.file_index import FileIndex, dated_files
from rlhf_assets.storage import Storage

INDEX = ("monitoring", "audit_rows.parquet")


def audit_index(storage: Storage) -> FileIndex:
    return FileIndex(storage, INDEX, AUDIT_SCHEMA, lambda path: parse_audits(storage.read_bytes(path)))


def indexed_audits(storage: Storage) -> pl.DataFrame:
    """Every audit judgement in the landing zone, as correlation.read_audits(storage) returns them (same rows, same
    order), from the index brought up to date first."""
    return audit_index(storage).refresh(dated_files(storage, "landing", AUDITS)).select(list(AUDIT_SCHEMA))
