"""Reads of the Dagster instance the sensors share: new materializations after a cursor, the latest per partition."""

from __future__ import annotations

from typing import Any

import dagster as dg


def new_materializations(instance: dg.DagsterInstance, asset: str, after_storage_id: int | None,
                         limit: int = 100) -> list[Any]:
    """Materialization records of ``asset`` stored after ``after_storage_id``, oldest first."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=after_storage_id),
        limit=limit, ascending=True).records
    return list(records)


def latest_metadata(instance: dg.DagsterInstance, asset: str, partitions: list[str]) -> dict[str, dict[str, Any]]:
    """partition → the plain metadata values of its latest materialization (partitions never materialized: absent)."""
    out: dict[str, dict[str, Any]] = {}
    for partition in partitions:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
        if records:
            materialization = records[0].asset_materialization
            out[partition] = {k: getattr(v, "value", v) for k, v in (materialization.metadata or {}).items()}
    return out
