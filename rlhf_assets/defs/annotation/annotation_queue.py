import dagster as dg
import polars as pl

from rlhf_assets.annotation.queue_builder import queue_day, window_days
from rlhf_assets.annotation.settings import AnnotationSettings
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, frame_table, mapping_table, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.labels import AggregationSettings

AnnotationQueueConfig = config_class("AnnotationQueueConfig", AnnotationSettings)


def _window_answers(validated_pairs, first: str, last: str) -> pl.DataFrame:
    """The validated comparisons of the stored days in [first, last] (an input over many days is StoredPartitions;
    over a single day, the table itself)."""
    if isinstance(validated_pairs, pl.DataFrame):
        return validated_pairs
    frames = [validated_pairs[d].load() for d in validated_pairs if first <= d <= last]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(
        schema={"pair_id": pl.String, "annotator_id": pl.String, "label": pl.String})


@dg.asset(
    partitions_def=daily_partitions,
    group_name="annotation",
    kinds={"polars"},
    owners=OWNERS,
    # the answers of the days before (quality control, dynamic overlap); only the stored ones are read
    ins={"validated_pairs": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
)
def annotation_queue(context: dg.AssetExecutionContext, config: AnnotationQueueConfig, storage: StorageResource,
                     validated_pairs) -> dg.MaterializeResult:
    """The day's work queue of pairs (annotation/queue_builder.py), written to annotation/queue/date=…/pairs.parquet
    for `rlhf annotate`: new pairs from the production release's policy and its reference (before any release: the
    bundled sample data, said in the metadata), each asked of overlap_k annotators, load balanced; pairs whose
    aggregated confidence stayed under target_confidence asked of one more annotator (dynamic overlap, up to
    overlap_cap); gold pairs and attention checks at qc_rate. First it reviews the window's quality-control answers
    and flags annotators under the gold-accuracy threshold or with repeated attention failures (the flagged list
    aggregated_labels reads)."""
    day = context.partition_key
    settings = settings_from(config, AnnotationSettings, annotators=tuple(config.annotators))
    first, last = window_days(day, settings)
    answers = _window_answers(validated_pairs, first, last)
    result = queue_day(storage.storage(), day, settings, answers, AggregationSettings())
    summary = result.build.summary
    context.log.info(f"{day}: {summary['assignments']} assignments from {result.source}; "
                     f"{len(summary['requeued'])} re-queued by dynamic overlap; new flags: {sorted(result.new_flags)}")
    quality = result.quality
    return dg.MaterializeResult(metadata=display({
        "pairs_from": result.source,
        "source_note": result.note,
        "assignments": summary["assignments"],
        "items": summary["items"],
        "dagster/row_count": summary["assignments"],
        "by_kind": mapping_table(summary["by_kind"], "kind", "assignments"),
        "by_kind_and_round": mapping_table(summary["by_kind_and_round"], "kind and round", "assignments"),
        "requeued_by_dynamic_overlap": len(summary["requeued"]),
        "requeued": table(summary["requeued"], ["item_id", "asked_before", "answered", "skipped", "confidence", "to"])
        if summary["requeued"] else "none",
        "annotator_loads": mapping_table(summary["loads"], "annotator", "assignments"),
        "annotators_from": summary["annotators_from"],
        "short_of_annotators": len(summary["short"]),
        "qc_pool_exhausted": summary["qc_pool_exhausted"],
        "quality_window": f"{first} … {last}",
        "annotator_quality": frame_table(quality) if quality.height else "no quality-control answers in the window",
        "newly_flagged": table([{"annotator_id": k, "reason": v["reason"]} for k, v in result.new_flags.items()],
                               ["annotator_id", "reason"]) if result.new_flags else "none",
        "path": dg.MetadataValue.path(result.path),
        "content_sha256": result.sha256,
    }))
