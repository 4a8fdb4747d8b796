"""A small IO manager over the storage root (dagster-polars does not support polars 2). It stores two things:

- tables: a polars DataFrame (or a :class:`~rlhf_assets.references.DatasetTable`, a table with the dataset id it is
  pinned as) → <root>/tables/<asset>/<partition>.parquet with a manifest beside it (content sha256, rows, columns,
  schema and code version, and the dataset id); both are atomic writes, and the manifest also goes into the
  materialization metadata, so the UI shows exactly which bytes a partition holds. Read back checked against the
  manifest's sha256.
- typed references (rlhf_assets/references.py: a model artifact, a calibration, an OPE report, a decision) →
  <partition>.json with their type name, read back as the same class.

Anything else is refused; nothing is pickled. Every materialization says which it stored (``stored_as``).

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
from rlhf_assets.references import DatasetTable, Reference, is_reference, reference_from_json
from rlhf_assets.storage import Storage, sha256_bytes

Stored = pl.DataFrame | DatasetTable | Reference


class StoredPartition:
    """One stored partition of an asset: its manifest (tables: {partition, sha256, rows, ...}; None for a JSON
    reference), its bytes, or the object itself (a table is checked against its manifest's sha256)."""

    def __init__(self, storage: Storage, asset: str, partition: str | None):
        self.storage, self.asset, self.partition = storage, asset, partition
        self.table_path = storage.table_path(asset, partition)

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        return self.storage.read_table_manifest(self.asset, self.partition)

    def read_bytes(self) -> bytes:
        path = self.table_path if self.manifest is not None else self.storage.reference_path(self.asset, self.partition)
        return self.storage.read_bytes(path)

    def load(self) -> Stored:
        if self.manifest is None:
            reference = self.storage.reference_path(self.asset, self.partition)
            if not reference.exists():
                raise FileNotFoundError(f"{self.asset} has no stored output for partition {self.partition!r} (looked "
                                        f"for {self.table_path} and {reference})")
            return reference_from_json(self.storage.read_json(reference))
        data = self.read_bytes()
        if sha256_bytes(data) != self.manifest["sha256"]:
            raise ValueError(f"{self.asset}/{self.partition}: stored table does not match its manifest's sha256")
        table = pl.read_parquet(io.BytesIO(data))
        if self.manifest.get("dataset_id"):
            return DatasetTable(dataset_id=self.manifest["dataset_id"], table=table)
        return table

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


class StorageIOManager(dg.ConfigurableIOManager):
    """Tables as Parquet with a manifest, typed references as JSON, under the storage root (see the module doc)."""

    root: str
    s3_endpoint_url: str | None = None

    def _storage(self) -> Storage:
        options = {"endpoint_url": self.s3_endpoint_url} if self.s3_endpoint_url and "://" in self.root else None
        return Storage(self.root, options)

    @staticmethod
    def _name(key: dg.AssetKey) -> str:
        return "__".join(key.path)

    def handle_output(self, context: dg.OutputContext, obj: Stored) -> None:
        storage = self._storage()
        name = self._name(context.asset_key)
        partition = context.partition_key if context.has_partition_key else None
        if is_reference(obj):
            path = storage.reference_path(name, partition)
            digest = storage.write_json(path, obj.to_json())
            context.add_output_metadata({"stored_as": f"json {type(obj).__name__}",
                                         "path": dg.MetadataValue.path(str(path)), "content_sha256": digest})
            return
        extra: dict[str, Any] = {}
        if isinstance(obj, DatasetTable):
            obj, extra = obj.table, {"dataset_id": obj.dataset_id}
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: the table IO manager stores a polars DataFrame, "
                            f"a DatasetTable or a typed reference (rlhf_assets/references.py), not {type(obj)!r}")
        manifest = storage.write_table(name, partition, obj, schema_version=SCHEMA_VERSION, **extra)
        context.add_output_metadata({
            "stored_as": "parquet table" + (" (DatasetTable)" if extra else ""),
            "dagster/row_count": obj.height,
            "path": dg.MetadataValue.path(str(storage.table_path(name, partition))),
            "content_sha256": manifest["sha256"],
            "code_version": manifest["code_version"],
            "schema_version": manifest["schema_version"],
        })

    def load_input(self, context: dg.InputContext) -> Stored | StoredPartitions:
        storage = self._storage()
        name = self._name(context.asset_key)
        if not context.has_asset_partitions:
            return StoredPartition(storage, name, None).load()
        keys = list(context.asset_partition_keys)
        if len(keys) == 1:  # same-partition (or any one-to-one) dependency
            return StoredPartition(storage, name, keys[0]).load()
        return StoredPartitions(storage, name, keys)
