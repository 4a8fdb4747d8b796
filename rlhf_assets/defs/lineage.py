"""Recording what a materialization actually read from a many-partition upstream.

A release's preference_dataset depends on ``aggregated_labels`` through AllPartitionMapping (any day may be in a
release; no built-in mapping can say "the days on or before this release's cutoff"). Over that many partitions
Dagster records, as the input's provenance, merely the newest materialization of ANY day — possibly one after the
cutoff, or a late re-run the pinned snapshot never saw. :func:`pinned_lineage` finds, for each pinned day, the
materialization that wrote exactly the pinned bytes (the IO manager's ``content_sha256``), and returns the
provenance tags Dagster itself would have written had the dependency been exactly those partitions: the input event
pointer (the newest consumed event, which data-time computations follow) and the input data version (Dagster's
formula for a partitioned input: sha256 of the partitions' data versions in key order).
"""

from __future__ import annotations

import hashlib
from typing import Any

import dagster as dg

# Dagster's provenance tags on a materialization (dagster._core.definitions.data_version).
INPUT_EVENT_POINTER_TAG = "dagster/input_event_pointer/{}"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/{}"
DATA_VERSION_TAG = "dagster/data_version"


def _matching_records(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                      want: dict[str, str]) -> dict[str, dg.EventLogRecord]:
    """{partition: the newest materialization whose content_sha256 is the pinned one}."""
    found: dict[str, dg.EventLogRecord] = {}
    cursor = None
    while len(found) < len(want):
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=sorted(want)), limit=500, cursor=cursor)
        for record in result.records:  # newest first
            mat = record.asset_materialization
            sha = mat.metadata.get("content_sha256") if mat else None
            if mat and mat.partition not in found and sha is not None and sha.value == want.get(mat.partition):
                found[mat.partition] = record
        if not result.has_more:
            break
        cursor = result.cursor
    return found


def pinned_lineage(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                   pinned: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(each pinned {partition, sha256, rows} plus the storage_id and run_id of the materialization that wrote those
    bytes, None where the instance no longer has it; the provenance tags for the downstream materialization)."""
    found = _matching_records(instance, asset_key, {p["partition"]: p["sha256"] for p in pinned})
    rows, versions = [], []
    for p in sorted(pinned, key=lambda p: p["partition"]):
        record = found.get(p["partition"])
        rows.append({**p, "storage_id": record.storage_id if record else None,
                     "run_id": record.run_id if record else None})
        versions.append((record.asset_materialization.tags or {}).get(DATA_VERSION_TAG) if record else None)
    name = asset_key.to_user_string()
    pointer = str(max(r.storage_id for r in found.values())) if found else "NULL"
    version = hashlib.sha256("".join(versions).encode()).hexdigest() if versions and all(versions) else "UNKNOWN"
    return rows, {INPUT_EVENT_POINTER_TAG.format(name): pointer, INPUT_DATA_VERSION_TAG.format(name): version}
