"""Partitions: daily on annotation date for the data pillar; a dynamic `release` for everything trained."""

import os

import dagster as dg

PARTITIONS_START_ENV = "RLHF_PARTITIONS_START"

# end_offset=1: today's annotations land during the day, so today's partition exists already.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get(PARTITIONS_START_ENV, "2024-01-01"), end_offset=1
)

# A release is created by a retrain trigger (CLI `rlhf release create`, the UI, later a sensor).
release_partitions = dg.DynamicPartitionsDefinition(name="release")
