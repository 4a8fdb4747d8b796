import dagster as dg

from rlhf_assets.defs.partitions import daily_partitions, release_partitions
from rlhf_assets.defs.training import gpu_run_tags

#: Jobs that train carry the GPU type as a run tag: the QueuedRunCoordinator runs at most N of them per GPU type at
#: once (k8s/values.yaml tagConcurrencyLimits).
TRAINS = gpu_run_tags()

data_pillar_job = dg.define_asset_job(
    "data_pillar",
    selection=dg.AssetSelection.groups("data"),
    partitions_def=daily_partitions,
    description="Landing zone → raw_comparisons → validated_pairs → aggregated labels, for one annotation date.",
)

reward_pillar_job = dg.define_asset_job(
    "reward_pillar",
    tags=TRAINS,
    selection=dg.AssetSelection.groups("reward"),
    partitions_def=release_partitions,
    description="preference_dataset → reward_model → rm_calibration, for one release.",
)

policy_pillar_job = dg.define_asset_job(
    "policy_pillar",
    tags=TRAINS,
    selection=dg.AssetSelection.groups("policy"),
    partitions_def=release_partitions,
    description="sft_policy → ppo_policy, for one release (its reward model and calibration must exist).",
)

release_chain_job = dg.define_asset_job(
    "release_chain",
    tags=TRAINS,
    selection=dg.AssetSelection.groups("reward", "policy", "release"),
    partitions_def=release_partitions,
    description="Everything of one release: dataset, reward model, calibration, policies, the held-out judge "
                "reward model, evaluation, decision.",
)

apply_release_decision_job = dg.define_asset_job(
    "apply_release_decision",
    selection=dg.AssetSelection.assets("production_release"),
    partitions_def=release_partitions,
    description="Apply one release's deployment decision (run it for an older release to roll back).",
)
