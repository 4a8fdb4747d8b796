"""What the earlier days' work queues hold, without their texts: an incremental index in the storage root
(``annotation/queue_index.parquet``: assignment, day, annotator, item and kind of every row of every
``annotation/queue/date=…/pairs.parquet``, with the file's size, modification time and checksum). The
``annotation_queue`` of a day needs from the days before only who was given which item (never twice, quality
control never repeated, new pairs never queued before), who skipped what (dynamic overlap) and the texts of the few
pairs it re-queues; the index gives the first three after reading only the queue files that are new or rewritten
(rlhf_assets/file_index.py), and :func:`queued_texts` reads the days of the re-queued pairs only.
No Dagster here."""

from __future__ import annotations

import polars as pl

from rlhf_assets.annotation.queue import ASSIGNMENT_SCHEMA, QUEUE_DIR, conform, queue_path
from rlhf_assets.annotation.queue_builder import PAIR_COLUMNS
from rlhf_assets.file_index import FileIndex, dated_files
from rlhf_assets.storage import Storage

INDEX = ("annotation", "queue_index.parquet")
INDEX_COLUMNS = ("assignment_id", "day", "annotator_id", "item_id", "item_kind")
QUEUED_ON = pl.col("file").str.extract(r"date=([^/]+)/[^/]*$")  # the queue folder's day


def queue_index(storage: Storage) -> FileIndex:
    return FileIndex(storage, INDEX, {c: ASSIGNMENT_SCHEMA[c] for c in INDEX_COLUMNS},
                     lambda path: conform(storage.read_parquet(path)))


def earlier_assignments(storage: Storage, day: str) -> pl.DataFrame:
    """The pairs queue's assignments of every day before ``day`` (INDEX_COLUMNS and ``queued_on``, the queue day),
    oldest day first: the rows a read of every earlier pairs.parquet would give, less the texts."""
    rows = queue_index(storage).refresh(dated_files(storage, *QUEUE_DIR, name="pairs.parquet"))
    return (rows.with_columns(QUEUED_ON.alias("queued_on")).filter(pl.col("queued_on") < day)
            .select(*INDEX_COLUMNS, "queued_on"))


def queued_texts(storage: Storage, earlier: pl.DataFrame, item_ids: list[str]) -> pl.DataFrame:
    """item_id and the texts (PAIR_COLUMNS) of these earlier pair items as first queued, read from the queue files
    of the days they were first queued on only."""
    pairs = earlier.filter((pl.col("item_kind") == "pair") & pl.col("item_id").is_in(item_ids))
    first = pairs.group_by("item_id").agg(pl.col("queued_on").min())
    frames = [pl.DataFrame(schema={"item_id": pl.String, **{c: ASSIGNMENT_SCHEMA[c] for c in PAIR_COLUMNS}})]
    for day, items in first.group_by("queued_on", maintain_order=True).agg("item_id").sort("queued_on").iter_rows():
        queue = conform(storage.read_parquet(queue_path(storage, day, "pairs")))
        frames.append(queue.filter((pl.col("item_kind") == "pair") & pl.col("item_id").is_in(items))
                      .unique("item_id", keep="first", maintain_order=True).select("item_id", *PAIR_COLUMNS))
    return pl.concat(frames)
