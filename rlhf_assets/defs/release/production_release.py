import dagster as dg

from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.registry.deployment import apply_decision


class ProductionReleaseConfig(dg.Config):
    override_reason: str | None = None
    """Promote a `reject`/`escalate` verdict anyway: why (recorded in the registry history, with the approver)."""
    approver: str | None = None
    """Who approved the override (required with override_reason)."""
    actor: str = "dagster"
    """Recorded as who moved the alias when there is no override."""


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"python"},
          io_manager_key="table_io_manager")
def production_release(context: dg.AssetExecutionContext, config: ProductionReleaseConfig, storage: StorageResource,
                       deployment_decision: dict):
    """Applies the release's decision to the registry: `promote` moves the `production` alias to its artifacts,
    `canary` the `canary` alias; `reject`/`escalate` move nothing without an approved override. Materializing an
    OLDER release's partition is the rollback: its aliases come back, nothing retrains."""
    result = apply_decision(storage.storage(), context.partition_key, deployment_decision,
                            override_reason=config.override_reason, approver=config.approver, actor=config.actor)
    aliases = result["aliases"]
    context.log.info(f"{result['action']}: {result['reason']}")
    holders = {k: (v or {}).get("release") for k, v in aliases.items() if k in ("production", "canary")}
    return dg.Output({"release": context.partition_key, "verdict": deployment_decision["verdict"],
                      "action": result["action"], "reason": result["reason"], "aliases": holders,
                      "history_seq": (result["entry"] or {}).get("seq")},
                     metadata={"action": result["action"], "reason": result["reason"],
                               "production": holders.get("production") or "", "canary": holders.get("canary") or "",
                               "artifacts": dg.MetadataValue.json(deployment_decision["artifacts"])})
