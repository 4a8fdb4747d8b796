"""The state of a release's blocking upstream checks on exactly that release's partition, read from the instance.

Fail closed: a check counts as passed only when its latest execution for the partition is a passing evaluation
of the asset's latest materialization of that partition. Everything else is either ``failed`` (the evaluation did
not pass) or ``not measured``: never evaluated for the partition, planned but never executed (the step errored or
was skipped), or evaluated on an older materialization than the one the release uses.

Public instance API only: the check's execution history (newest first, paged with its cursor, so evaluations of
other partitions never push the target partition's out of view) and the asset's materialization records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg

from rlhf_assets.defs.check_names import RELEASE_BLOCKING_CHECKS

PASSED, FAILED, NOT_MEASURED = "passed", "failed", "not measured"
_PAGE = 100


@dataclass(frozen=True)
class CheckStatus:
    asset: str
    check: str
    status: Literal["passed", "failed", "not measured"]
    detail: str
    run_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.asset}:{self.check}"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "run_id": self.run_id,
                "metadata": self.metadata}


def _latest_record(instance: dg.DagsterInstance, key: dg.AssetCheckKey, partition: str):
    """The newest execution record of ``key`` for ``partition`` (any status), or None."""
    storage = instance.event_log_storage
    cursor = None
    while True:
        page = storage.get_asset_check_execution_history(key, limit=_PAGE, cursor=cursor)
        for record in page:
            if record.partition == partition:
                return record
        if len(page) < _PAGE:
            return None
        cursor = page[-1].id


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def check_status(instance: dg.DagsterInstance, asset: str, check: str, partition: str) -> CheckStatus:
    """The status of one check on one partition (see the module docstring for the rules)."""
    def status(s: str, detail: str, record=None, metadata=None) -> CheckStatus:
        return CheckStatus(asset, check, s, detail, getattr(record, "run_id", None), metadata or {})

    record = _latest_record(instance, dg.AssetCheckKey(dg.AssetKey(asset), check), partition)
    if record is None:
        return status(NOT_MEASURED, f"never evaluated for partition {partition}")
    evaluation = record.event.dagster_event.event_specific_data if record.event is not None else None
    if not isinstance(evaluation, dg.AssetCheckEvaluation):
        return status(NOT_MEASURED, f"planned in run {record.run_id} but never executed (the step failed or was "
                                    f"skipped)", record)
    metadata = _plain(evaluation.metadata)
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    target = evaluation.target_materialization_data
    if latest and (target is None or target.storage_id != latest[0].storage_id):
        return status(NOT_MEASURED, f"evaluated in run {record.run_id} on an older materialization of {asset} than "
                                    f"the latest one (run {latest[0].run_id}); rerun the check", record, metadata)
    if evaluation.passed:
        return status(PASSED, f"passed in run {record.run_id}", record, metadata)
    if evaluation.severity != dg.AssetCheckSeverity.ERROR:
        return status(PASSED, f"warned in run {record.run_id} (severity {evaluation.severity.value})", record,
                      metadata)
    return status(FAILED, f"failed in run {record.run_id}", record, metadata)


def blocking_check_statuses(instance: dg.DagsterInstance, partition: str,
                            checks: Iterable[tuple[str, str]] = RELEASE_BLOCKING_CHECKS) -> list[CheckStatus]:
    return [check_status(instance, asset, check, partition) for asset, check in checks]
