import dagster as dg

from rlhf_assets.defs.partitions import daily_partitions

data_pillar_job = dg.define_asset_job(
    "data_pillar",
    selection=dg.AssetSelection.groups("data"),
    partitions_def=daily_partitions,
    description="Landing zone → raw_comparisons → validated_pairs → aggregated labels, for one annotation date.",
)
