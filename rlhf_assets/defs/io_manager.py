"""A small polars IO manager over the storage root (dagster-polars does not support polars 2).

Each output is written to <root>/tables/<asset>/<partition>.parquet with a manifest beside it (content sha256,
rows, columns, schema and code version); both are atomic writes. The manifest also goes into the
materialization metadata, so the UI shows exactly which bytes a partition holds.
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

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars DataFrame, got {type(obj)!r}")
        storage = self._storage()
        name = self._name(context.asset_key)
        partition = context.partition_key if context.has_partition_key else None
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

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict[str, pl.DataFrame]:
        storage = self._storage()
        name = self._name(context.asset_key)
        if not context.has_asset_partitions:
            return storage.read_parquet(storage.table_path(name))
        keys = context.asset_partition_keys
        if context.has_partition_key and keys == [context.partition_key]:  # same-partition dependency
            return storage.read_parquet(storage.table_path(name, keys[0]))
        return {key: storage.read_parquet(storage.table_path(name, key)) for key in keys}
