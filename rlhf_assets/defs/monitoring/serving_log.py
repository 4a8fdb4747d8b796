import dagster as dg

from rlhf_assets.defs.partitions import daily_partitions

serving_log = dg.AssetSpec(
    "serving_log",
    partitions_def=daily_partitions,
    group_name="monitoring",
    kinds={"parquet", "fastapi"},
    owners=["team:rlhf"],
    description="What the reward-model service scored, one file per flush under serving-logs/reward-model/date=…/ "
                "(written by `rlhf serve`, not by a run). Its checks are recorded by the sensors as the traffic "
                "arrives — score and prompt drift per window (drift_sensor), the human–RM correlation on audited pairs "
                "(human_rm_correlation_sensor) — so their history shows per day without a run.",
)
