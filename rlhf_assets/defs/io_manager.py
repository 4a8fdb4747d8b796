"""A small IO manager over the storage root (dagster-polars does not support polars 2).

Tables (polars DataFrames) are written to <root>/tables/<asset>/<partition>.parquet with a manifest beside it
(content sha256, rows, columns, schema and code version); both are atomic writes, and the manifest also goes into
the materialization metadata, so the UI shows exactly which bytes a partition holds. Small references (a dict:
an artifact id, a calibrator) are written as <partition>.json. Nothing is pickled.

An input over ONE partition gets the stored object. An input over many (e.g. AllPartitionMapping: every daily key
since the partitions' start, ~1,000, most never materialized) gets :class:`StoredPartitions`: the stored ones
among those keys (one listing of the asset's folder), each read only when the asset asks for it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

import dagster as dg
import polars as pl

from rlhf_assets.preference.schema import SCHEMA_VERSION
from rlhf_assets.storage import Storage, sha256_bytes


class StoredPartition:
    """One stored partition of an asset: its manifest (tables: {partition, sha256, rows, ...}; None for a JSON
    reference), its bytes, or the object itself (a table is checked against its manifest's sha256)."""

    def __init__(self, storage: Storage, asset: str, partition: str):
        self.storage, self.asset, self.partition = storage, asset, partition
        self.table_path = storage.table_path(asset, partition)

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        return self.storage.read_table_manifest(self.asset, self.partition)

    def read_bytes(self) -> bytes:
        path = self.table_path if self.manifest is not None else self.table_path.with_suffix(".json")
        return self.storage.read_bytes(path)

    def load(self) -> pl.DataFrame | dict:
        if self.manifest is None:
            return self.storage.read_json(self.table_path.with_suffix(".json"))
        data = self.read_bytes()
        if sha256_bytes(data) != self.manifest["sha256"]:
            raise ValueError(f"{self.asset}/{self.partition}: stored table does not match its manifest's sha256")
        return pl.read_parquet(io.BytesIO(data))

    def __repr__(self) -> str:
        return f"StoredPartition({self.asset!r}, {self.partition!r})"


class StoredPartitions(Mapping[str, StoredPartition]):
    """The stored partitions among the keys an input asked for, in key order; nothing is read until asked."""

    def __init__(self, storage: Storage, asset: str, keys: list[str]):
        names = {p.name for p in storage.list_files(storage.path("tables", asset))}
        # a manifest is written after its table, so it marks a complete one; .json is a reference
        stored = [k for k in keys if f"{k}.manifest.json" in names or f"{k}.json" in names]
        self._items = {k: StoredPartition(storage, asset, k) for k in sorted(stored)}
        self.requested = len(keys)

    def __getitem__(self, key: str) -> StoredPartition:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class PolarsTableIOManager(dg.ConfigurableIOManager):
    root: str
    s3_endpoint_url: str | None = None

    def _storage(self) -> Storage:
        options = {"endpoint_url": self.s3_endpoint_url} if self.s3_endpoint_url and "://" in self.root else None
        return Storage(self.root, options)

    @staticmethod
    def _name(key: dg.AssetKey) -> str:
        return "__".join(key.path)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | dict) -> None:
        storage = self._storage()
        name = self._name(context.asset_key)
        partition = context.partition_key if context.has_partition_key else None
        if isinstance(obj, dict):
            path = storage.table_path(name, partition).with_suffix(".json")
            digest = storage.write_json(path, obj)
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "content_sha256": digest})
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars DataFrame or a dict, "
                            f"got {type(obj)!r}")
        path = storage.table_path(name, partition)
        manifest = storage.write_table(name, partition, obj, schema_version=SCHEMA_VERSION)
        digest = manifest["sha256"]
        context.add_output_metadata(
            {
                "dagster/row_count": obj.height,
                "path": dg.MetadataValue.path(str(path)),
                "content_sha256": digest,
                "code_version": manifest["code_version"],
                "schema_version": manifest["schema_version"],
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict | StoredPartitions:
        storage = self._storage()
        name = self._name(context.asset_key)
        if not context.has_asset_partitions:
            return self._read(storage, name, None)
        keys = list(context.asset_partition_keys)
        if len(keys) == 1:  # same-partition (or any one-to-one) dependency
            return self._read(storage, name, keys[0])
        return StoredPartitions(storage, name, keys)

    @staticmethod
    def _read(storage: Storage, name: str, partition: str | None) -> pl.DataFrame | dict:
        table = storage.table_path(name, partition)
        if table.exists():
            return storage.read_parquet(table)
        reference = table.with_suffix(".json")
        if reference.exists():
            return storage.read_json(reference)
        raise FileNotFoundError(f"{name} has no stored output for partition {partition!r} (looked for {table})")
