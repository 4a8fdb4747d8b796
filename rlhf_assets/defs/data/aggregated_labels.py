import dagster as dg
import polars as pl

from rlhf_assets.automation.annotators import read_flagged
from rlhf_assets.defs.check_names import AGGREGATION_CONVERGED
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, frame_table, mapping_table, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.preference.labels import AggregationSettings, aggregate_comparisons

# The out-of-core knobs are `rlhf aggregate`'s: this asset gets its day's comparisons as one frame from the IO manager.
AggregationConfig = config_class("AggregationConfig", AggregationSettings, exclude=("out_of_core_bytes", "batch_rows"))


@dg.multi_asset(
    partitions_def=daily_partitions,
    group_name="data",
    outs={
        "aggregated_labels": dg.AssetOut(
            kinds={"polars", "numpy"},
            owners=OWNERS,
            description="One row per pair: aggregated label (canonical orientation), posterior confidence, votes.",
        ),
        "annotator_reliability": dg.AssetOut(
            kinds={"polars"},
            owners=OWNERS,
            description="One row per annotator: estimated accuracy and confusion matrix, position bias, tie rate, kappa "
                        "against the aggregate, gold accuracy and attention failures, flag, reason and vote weight.",
        ),
        "annotator_agreement": dg.AssetOut(
            kinds={"polars", "statsmodels"},
            owners=OWNERS,
            description="Cohen's kappa for each annotator pair with enough shared items.",
        ),
    },
    check_specs=[dg.AssetCheckSpec(AGGREGATION_CONVERGED, asset="aggregated_labels", partitions_def=daily_partitions,
                                   description="Dawid–Skene's EM converged within max_iter (a warning: the labels "
                                               "are still the last iterate's).")],
)
def aggregated_labels(context: dg.AssetExecutionContext, config: AggregationConfig, storage: StorageResource,
                      validated_pairs: pl.DataFrame):
    """Aggregate every annotator's judgement of a pair into one label (Dawid–Skene by default). Gold and attention
    answers are left out of the labels (they fill the annotator table's gold accuracy and attention failures).
    Flagged annotators (the disagreement sensor's and the annotation queue's quality-control flags) are marked in
    the annotator table, left out with `flagged_annotators: exclude`, down-weighted with `downweight`. The most
    disputed pairs are listed in the metadata."""
    settings = settings_from(config, AggregationSettings)
    result = aggregate_comparisons(validated_pairs, settings, flagged=read_flagged(storage.storage()))
    stats = result.stats
    context.log.info(f"{context.partition_key}: {stats}")
    yield dg.Output(
        result.labels,
        output_name="aggregated_labels",
        metadata=display({
            "method": settings.method,
            "pairs": stats["pairs"],
            "comparisons": stats["comparisons"],
            "annotators": stats["annotators"],
            "iterations": stats.get("iterations", 0),
            "fleiss_kappa": stats.get("fleiss_kappa"),
            "mean_cohen_kappa": stats.get("mean_cohen_kappa"),
            "mean_confidence": stats.get("mean_confidence"),
            "unanimous_share": stats.get("unanimous_share"),
            "label_counts": mapping_table(stats.get("label_counts", {}), "label", "pairs"),
            "excluded_annotators": ", ".join(stats.get("excluded_annotators", [])) or "-",
            "excluded_labels": stats.get("excluded_labels", 0),
            "downweighted_annotators": ", ".join(stats.get("downweighted_annotators", [])) or "-",
            "qc_answers_left_out": stats.get("qc_answers", 0),
            "mean_item_disagreement": stats.get("mean_item_disagreement"),
            "disputed_items": table(stats["disputed_items"], ["pair_id", "disagreement", "n_votes", "label",
                                                             "confidence", "prompt"])
            if stats.get("disputed_items") else "none",
        }),
    )
    yield dg.Output(
        result.annotators,
        output_name="annotator_reliability",
        metadata={"annotators": result.annotators.height, "table": frame_table(
            result.annotators.drop("confusion").sort("accuracy"))},
    )
    yield dg.Output(
        result.agreement,
        output_name="annotator_agreement",
        metadata={"pairs": result.agreement.height, "min_overlap": settings.min_overlap,
                  "table": frame_table(result.agreement.sort("kappa"))},
    )
    yield dg.AssetCheckResult(
        check_name=AGGREGATION_CONVERGED,
        asset_key="aggregated_labels",
        passed=bool(stats.get("converged", True)),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"iterations": stats.get("iterations", 0), "max_iter": settings.max_iter},
    )
