from typing import Literal

import dagster as dg
import polars as pl

from rlhf_assets.defs.check_names import AGGREGATION_CONVERGED
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.preference.labels import AggregationSettings, aggregate_comparisons


class AggregationConfig(dg.Config):
    method: Literal["dawid-skene", "majority"] = "dawid-skene"
    shrinkage: float = AggregationSettings.shrinkage
    """Pseudo-counts pulling each annotator's confusion matrix toward the pooled one (0 = plain Dawid–Skene)."""
    max_iter: int = AggregationSettings.max_iter
    tol: float = AggregationSettings.tol
    seed: int = AggregationSettings.seed
    min_overlap: int = AggregationSettings.min_overlap
    """Items two annotators must share before their Cohen's kappa is reported."""


def _table_md(frame: pl.DataFrame, limit: int = 50) -> str:
    head = frame.head(limit)
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in head.iter_rows()]
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


@dg.multi_asset(
    partitions_def=daily_partitions,
    group_name="data",
    outs={
        "aggregated_labels": dg.AssetOut(
            io_manager_key="table_io_manager", kinds={"polars", "numpy"},
            description="One row per pair: aggregated label (canonical orientation), posterior confidence, votes.",
        ),
        "annotator_reliability": dg.AssetOut(
            io_manager_key="table_io_manager", kinds={"polars"},
            description="One row per annotator: estimated accuracy and confusion matrix, position bias, tie rate.",
        ),
        "annotator_agreement": dg.AssetOut(
            io_manager_key="table_io_manager", kinds={"polars", "statsmodels"},
            description="Cohen's kappa for each annotator pair with enough shared items.",
        ),
    },
    check_specs=[dg.AssetCheckSpec(AGGREGATION_CONVERGED, asset="aggregated_labels", partitions_def=daily_partitions)],
)
def aggregated_labels(context: dg.AssetExecutionContext, config: AggregationConfig, validated_pairs: pl.DataFrame):
    """Aggregate every annotator's judgement of a pair into one label (Dawid–Skene by default)."""
    settings = AggregationSettings(**config.model_dump())
    result = aggregate_comparisons(validated_pairs, settings)
    stats = result.stats
    context.log.info(f"{context.partition_key}: {stats}")
    yield dg.Output(
        result.labels,
        output_name="aggregated_labels",
        metadata={
            "method": settings.method,
            "pairs": stats["pairs"],
            "comparisons": stats["comparisons"],
            "annotators": stats["annotators"],
            "iterations": stats.get("iterations", 0),
            "fleiss_kappa": stats.get("fleiss_kappa"),
            "mean_cohen_kappa": stats.get("mean_cohen_kappa"),
            "mean_confidence": stats.get("mean_confidence"),
            "unanimous_share": stats.get("unanimous_share"),
            "label_counts": dg.MetadataValue.json(stats.get("label_counts", {})),
        },
    )
    yield dg.Output(
        result.annotators,
        output_name="annotator_reliability",
        metadata={"annotators": result.annotators.height, "table": dg.MetadataValue.md(_table_md(
            result.annotators.drop("confusion").sort("accuracy")))},
    )
    yield dg.Output(
        result.agreement,
        output_name="annotator_agreement",
        metadata={"pairs": result.agreement.height, "min_overlap": settings.min_overlap,
                  "table": dg.MetadataValue.md(_table_md(result.agreement.sort("kappa")))},
    )
    yield dg.AssetCheckResult(
        check_name=AGGREGATION_CONVERGED,
        asset_key="aggregated_labels",
        passed=bool(stats.get("converged", True)),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"iterations": stats.get("iterations", 0), "max_iter": settings.max_iter},
    )
