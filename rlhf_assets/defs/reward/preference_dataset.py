import dataclasses

import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.io_manager import StoredPartitions
from rlhf_assets.defs.lineage import pinned_lineage
from rlhf_assets.defs.metadata import display
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.snapshot import UPSTREAM_ASSET, SnapshotSettings, load_or_build_snapshot
from rlhf_assets.references import DatasetTable
from rlhf_assets.registry.releases import get_release

PreferenceDatasetConfig = config_class("PreferenceDatasetConfig", SnapshotSettings)


@dg.asset(
    partitions_def=release_partitions,
    group_name="reward",
    kinds={"polars"},
    owners=OWNERS,
    # Any day may be in a release, so the declared dependency is on all of them; the IO manager hands over only the
    # stored ones, lazily, and the snapshot reads those on or before the cutoff. What it actually read is recorded
    # on the materialization (pinned_lineage).
    ins={UPSTREAM_ASSET: dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
)
def preference_dataset(context: dg.AssetExecutionContext, config: PreferenceDatasetConfig, storage: StorageResource,
                       aggregated_labels: StoredPartitions) -> dg.Output[DatasetTable]:
    """Every aggregated day up to the release's cutoff, pinned by content hash (the manifest's hash is the dataset
    id) and split by a hash of the prompt. Rematerializing a release reads its own snapshot. The materialization
    records the days it holds (`upstream_partitions`, each with the aggregated_labels materialization that wrote
    those bytes) and carries them as its input provenance; its data version is the dataset id."""
    store = storage.storage()
    release = get_release(store, context.partition_key)
    settings = settings_from(config, SnapshotSettings)
    snapshot = load_or_build_snapshot(store, release.key, release.cutoff, aggregated_labels, settings)
    m = snapshot.manifest
    if snapshot.reused and m["settings"] != dataclasses.asdict(settings):
        context.log.warning(f"release {release.key} is pinned to its first snapshot (settings {m['settings']}); "
                            "the new config is ignored — create a new release to change it")
    context.log.info(f"release {release.key}: dataset {snapshot.dataset_id[:16]} "
                     f"({'pinned snapshot' if snapshot.reused else 'new snapshot'}), {m['rows']} pairs")
    lineage, provenance = pinned_lineage(context.instance, dg.AssetKey(UPSTREAM_ASSET), m["upstream"])
    return dg.Output(
        DatasetTable(dataset_id=snapshot.dataset_id, table=snapshot.table),
        data_version=dg.DataVersion(snapshot.dataset_id),
        tags=provenance,
        metadata=display({
            "dataset_id": snapshot.dataset_id,
            "cutoff": release.cutoff,
            "reused_pinned_snapshot": snapshot.reused,
            "pairs": m["rows"],
            "splits": dg.MetadataValue.json(m["splits"]),
            "dropped": dg.MetadataValue.json(m["dropped"]),
            "upstream_partitions": lineage,  # a table: each day and the materialization that wrote its bytes
            "settings": dg.MetadataValue.json(m["settings"]),
        }),
    )

