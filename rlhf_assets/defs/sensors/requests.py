"""Run requests the automation sensors make: a retrain (a new release partition and its release chain) and the moves
of the aliases (rollback, canary graduation, ending a canary) through production_release. Each is recorded in the
automation ledger with its evidence, and tagged so the UI shows why the run exists."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from rlhf_assets.automation.actions import Action
from rlhf_assets.automation.ledger import record
from rlhf_assets.registry.releases import create_release, new_release_key
from rlhf_assets.storage import Storage

TRIGGER_TAG, EVIDENCE_TAG = "rlhf/trigger", "rlhf/evidence"
MODES = {"rollback": "rollback", "graduate": "graduate", "end_canary": "end_canary"}


def _tags(source: str, action: Action) -> dict[str, str]:
    return {TRIGGER_TAG: source, "rlhf/action": action.kind,
            EVIDENCE_TAG: json.dumps(action.evidence, default=str, sort_keys=True)[:2000]}


def retrain(storage: Storage, source: str, action: Action,
            now: datetime | None = None) -> tuple[dg.AddDynamicPartitionsRequest, dg.RunRequest]:
    """A new release (record + partition) and the release chain for it."""
    now = now or datetime.now(UTC)
    short = {"drift_sensor": "drift", "human_rm_correlation_sensor": "corr"}.get(source, "auto")
    release = create_release(storage, key=f"{new_release_key(now)}-{short}", note=f"{source}: {action.trigger}")
    record(storage, "retrains", {"release": release.key, "source": source, "trigger": action.trigger,
                                 "evidence": action.evidence}, now)
    return (dg.AddDynamicPartitionsRequest("release", [release.key]),
            dg.RunRequest(run_key=f"retrain:{release.key}", job_name="release_chain", partition_key=release.key,
                          tags=_tags(source, action)))


def move(storage: Storage, source: str, action: Action, registry_seq: int | None) -> dg.RunRequest:
    """production_release for the action's release in the matching mode, recorded with its trigger."""
    record(storage, "moves", {"kind": action.kind, "release": action.release, "source": source,
                              "trigger": action.trigger, "evidence": action.evidence})
    config: dict[str, Any] = {"mode": MODES[action.kind], "trigger": f"{source}: {action.trigger}", "actor": source}
    return dg.RunRequest(run_key=action.run_key(registry_seq), job_name="apply_release_decision",
                         partition_key=action.release, tags=_tags(source, action),
                         run_config={"ops": {"production_release": {"config": config}}})
