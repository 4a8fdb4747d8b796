import dagster as dg

from rlhf_assets.annotation.audit import build_audit_queue
from rlhf_assets.annotation.roster import queue_annotators
from rlhf_assets.annotation.settings import AuditSettings
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, frame_table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import daily_partitions
from rlhf_assets.defs.resources import StorageResource

AuditQueueConfig = config_class("AuditQueueConfig", AuditSettings)

STRATA_COLUMNS = ["stratum", "size", "allocated", "inclusion_probability", "expected_disagreement", "disagreement",
                  "sd", "drift", "excess_z", "share_shift", "audited_before", "weight"]


@dg.asset(
    partitions_def=daily_partitions,
    group_name="annotation",
    kinds={"polars", "scikitlearn"},
    owners=OWNERS,
    deps=["serving_log"],
)
def audit_queue(context: dg.AssetExecutionContext, config: AuditQueueConfig,
                storage: StorageResource) -> dg.MaterializeResult:
    """The day's audit queue (annotation/audit.py), written to annotation/queue/date=…/audit.parquet for
    `rlhf annotate`; the answers land in landing/audits/ for the human–RM correlation monitor. The day's served
    compared pairs (the serving log, with their texts) are stratified by prompt cluster (k-means on the logged prompt
    embeddings) × score band; the daily label budget goes to every non-empty stratum's floor and then in proportion
    to N·S·(1 + drift_boost·drift) — S the spread of model–human disagreement the past audits predict, drift the
    cluster's excess disagreement or traffic-share change. Each pair's inclusion probability is stored with the
    sample (annotation/audit/date=…/sample.parquet); the correlation monitor weights audits by 1/π."""
    day = context.partition_key
    settings = settings_from(config, AuditSettings, auditors=tuple(config.auditors),
                             score_bands=tuple(config.score_bands))
    store = storage.storage()
    annotators, annotators_from = queue_annotators(store, settings.auditors)
    result = build_audit_queue(store, day, settings, annotators)
    sample, queue = result["sample"], result["assignments"]
    context.log.info(f"{day}: {sample.pairs.height} of {sample.candidates} served pairs to audit "
                     f"({queue.height} assignments), {sample.without_texts} without texts")
    strata = sample.strata
    return dg.MaterializeResult(metadata=display({
        "served_pairs": sample.candidates,
        "pairs_without_texts": sample.without_texts,
        "audited_pairs": sample.pairs.height,
        "assignments": queue.height,
        "dagster/row_count": queue.height,
        "budget_labels": settings.daily_label_budget,
        "budget_used_labels": queue.height,
        "strata": strata.height,
        "strata_table": frame_table(strata.select(STRATA_COLUMNS)) if strata.height else "no served pairs",
        "annotators_from": annotators_from,
        "clusters_fitted_on": result["clusters_fitted_on"] or "-",
        "path": dg.MetadataValue.path(str(result["path"])),
    }))
