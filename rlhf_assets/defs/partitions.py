"""Partitions: daily on annotation date for the data pillar; a dynamic `release` for everything trained.

The daily partitions run from ``RLHF_PARTITIONS_START`` (default: :data:`DEFAULT_PARTITIONS_START`, the first day of
the bundled sample data) to tomorrow, or — when ``RLHF_PARTITIONS_END`` is set — up to that day, exclusive. A
deployment sets the start to its first day of annotations, so the UI's "filled" share counts only days that could
hold data; `rlhf demo` sets both to its sample days. Both are read when the definitions load: set them in the
environment of the process that loads them (``dagster dev``, the run workers).
"""

import os

import dagster as dg

from rlhf_assets.instance import PARTITIONS_END_ENV, PARTITIONS_START_ENV

DEFAULT_PARTITIONS_START = "2025-06-01"


def _daily(start: str, end: str | None) -> dg.DailyPartitionsDefinition:
    # Open-ended: end_offset=1, because today's annotations land during the day, so today's partition exists already.
    return dg.DailyPartitionsDefinition(start_date=start, end_date=end, end_offset=0 if end else 1)


daily_partitions = _daily(os.environ.get(PARTITIONS_START_ENV) or DEFAULT_PARTITIONS_START,
                          os.environ.get(PARTITIONS_END_ENV) or None)

# A release is created by a retrain trigger (CLI `rlhf release create`, the UI, later a sensor).
release_partitions = dg.DynamicPartitionsDefinition(name="release")
