from typing import Literal

import dagster as dg

from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.references import DecisionRef, ReleaseActionRef
from rlhf_assets.registry.deployment import (
    NeverInProduction,
    NotInCanary,
    apply_decision,
    end_canary,
    graduate,
    rollback,
)

BACKFILL_TAG = "dagster/backfill"  # Dagster's system tag on every run a backfill launches


class ProductionReleaseConfig(dg.Config):
    mode: Literal["apply", "rollback", "graduate", "end_canary"] = "apply"
    """`apply`: apply this release's deployment decision. `rollback`: put `production` back to exactly the artifacts
    this release last held in production (from the registry history, however it got there: promote, override or
    rollback); the decision is not re-applied. A release that never held production fails the run. `graduate`: the
    release, now canary, goes to production on live evidence; `end_canary`: it is taken out of canary (both fail
    the run when the release is not the canary)."""
    trigger: str | None = None
    """Why this move, when automation makes it (the sensor and its evidence): recorded in the registry history."""
    override_reason: str | None = None
    """Promote a `reject`/`escalate` verdict anyway: why (recorded in the registry history, with the approver)."""
    approver: str | None = None
    """Who approved the override (required with override_reason)."""
    actor: str = "dagster"
    """Recorded as who moved the alias when there is no override."""


def targeted_releases(context: dg.AssetExecutionContext) -> list[str] | None:
    """Every partition of this asset the run belongs to: its partition range, and — for a run launched by a backfill
    (one run per partition) — every partition that backfill targets. None when the backfill cannot be read."""
    keys = set(context.partition_keys)
    backfill_id = context.run.tags.get(BACKFILL_TAG)
    if backfill_id:
        backfill = context.instance.get_backfill(backfill_id)
        if backfill is None:
            return None
        try:
            if backfill.is_asset_backfill:
                data = (backfill.asset_backfill_data  # as stored today; older ones are serialized
                        or backfill.get_asset_backfill_data(context.repository_def.asset_graph))
                subset = data.target_subset.partitions_subsets_by_asset_key.get(context.asset_key)
                keys |= set(subset.get_partition_keys()) if subset is not None else set()
            else:  # a job backfill: every one of its partitions runs this asset
                keys |= set(backfill.partition_names or [])
        except Exception as exc:  # a backfill we cannot read must not move production
            context.log.warning(f"could not read backfill {backfill_id}: {exc!r}")
            return None
    return sorted(keys)


def _one_release(context: dg.AssetExecutionContext) -> str:
    """The run's single release partition; fails the step, before anything moves, for a run over several."""
    keys = targeted_releases(context)
    if keys is None:
        raise dg.Failure(description=f"production_release: run {context.run_id} belongs to backfill "
                                     f"{context.run.tags.get(BACKFILL_TAG)}, which cannot be read, so it may target "
                                     "several releases. Nothing was moved: materialize one release partition per run.")
    if len(keys) > 1:
        shown = ", ".join(keys[:5]) + (f", … ({len(keys)} in all)" if len(keys) > 5 else "")
        raise dg.Failure(description=(
            f"production_release moves the global production/canary aliases, so a run may target only one release; "
            f"this run targets {len(keys)} ({shown}) through a partition range or backfill, and the last to run "
            "would win. Nothing was moved: materialize one release partition per run (`rlhf release promote R` / "
            "`rlhf release rollback R`)."))
    return keys[0]


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"python"}, owners=OWNERS)
def production_release(context: dg.AssetExecutionContext, config: ProductionReleaseConfig, storage: StorageResource,
                       deployment_decision):  # untyped: a multi-partition run must reach _one_release's error
    """Applies the release's decision to the registry: `promote` moves the `production` alias to its artifacts,
    `canary` the `canary` alias; `reject`/`escalate` move nothing without an approved override. Materializing an
    OLDER release's partition is the rollback: for a release promoted by its own decision, re-applying it brings its
    artifacts back; mode `rollback` (what `rlhf release rollback` runs) restores exactly the artifacts the release
    last held in production, whatever put them there. One release per run: a range or backfill fails."""
    release = _one_release(context)
    if config.mode in ("graduate", "end_canary"):
        if config.override_reason or config.approver:
            raise dg.Failure(description=f"mode {config.mode} acts on live evidence; it takes no override")
        move = graduate if config.mode == "graduate" else end_canary
        try:
            result = move(storage.storage(), release, why=config.trigger or "requested", actor=config.actor)
        except NotInCanary as exc:
            raise dg.Failure(description=str(exc)) from exc
        artifacts = result["artifacts"]
    elif config.mode == "rollback":
        if config.override_reason or config.approver:
            raise dg.Failure(description="mode rollback restores what the release held in production; it takes no "
                                         "override_reason/approver (those are for applying a reject/escalate verdict)")
        try:
            result = rollback(storage.storage(), release, actor=config.actor, why=config.trigger)
        except NeverInProduction as exc:
            raise dg.Failure(description=str(exc)) from exc
        artifacts = result["artifacts"]
    else:
        if not isinstance(deployment_decision, DecisionRef):
            raise dg.Failure(description=f"production_release: expected release {release}'s DecisionRef, got "
                                         f"{type(deployment_decision).__name__}")
        result = apply_decision(storage.storage(), release, deployment_decision.as_decision(),
                                override_reason=config.override_reason, approver=config.approver, actor=config.actor)
        artifacts = deployment_decision.artifacts
    aliases = result["aliases"]
    context.log.info(f"{result['action']}: {result['reason']}")
    holders = {k: (v or {}).get("release") for k, v in aliases.items() if k in ("production", "canary")}
    verdict = deployment_decision.verdict if isinstance(deployment_decision, DecisionRef) else ""
    return dg.Output(ReleaseActionRef(release=release, verdict=verdict, mode=config.mode, action=result["action"],
                                      reason=result["reason"], aliases=holders, artifacts=dict(artifacts),
                                      history_seq=(result["entry"] or {}).get("seq")),
                     metadata={"mode": config.mode, "action": result["action"], "reason": result["reason"],
                               "production": holders.get("production") or "", "canary": holders.get("canary") or "",
                               "artifacts": dg.MetadataValue.json(dict(artifacts))})
