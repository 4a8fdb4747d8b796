"""A small IO manager over the storage root (dagster-polars does not support polars 2).

Tables (polars DataFrames) are written to <root>/tables/<asset>/<partition>.parquet with a manifest beside it
(content sha256, rows, columns, schema and code version); both are atomic writes, and the manifest also goes into
the materialization metadata, so the UI shows exactly which bytes a partition holds. Small references (a dict:
an artifact id, a calibrator) are written as <partition>.json. Nothing is pickled.
"""

from __future__ import annotations

import dagster as dg
import polars as pl

from rlhf_assets.manifest import table_manifest
from rlhf_assets.storage import Storage


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
        digest = storage.write_parquet(path, obj)
        manifest = table_manifest(name, partition, digest, obj.height, obj.columns)
        storage.write_json(storage.manifest_path(name, partition), manifest)
        context.add_output_metadata(
            {
                "dagster/row_count": obj.height,
                "path": dg.MetadataValue.path(str(path)),
                "content_sha256": digest,
                "code_version": manifest["code_version"],
                "schema_version": manifest["schema_version"],
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict:
        storage = self._storage()
        name = self._name(context.asset_key)
        if not context.has_asset_partitions:
            return self._read(storage, name, None)
        keys = context.asset_partition_keys
        if context.has_partition_key and keys == [context.partition_key]:  # same-partition dependency
            return self._read(storage, name, keys[0])
        return {key: self._read(storage, name, key) for key in keys}

    @staticmethod
    def _read(storage: Storage, name: str, partition: str | None) -> pl.DataFrame | dict:
        table = storage.table_path(name, partition)
        if table.exists():
            return storage.read_parquet(table)
        reference = table.with_suffix(".json")
        if reference.exists():
            return storage.read_json(reference)
        raise FileNotFoundError(f"{name} has no stored output for partition {partition!r} (looked for {table})")
