"""audit_queue through a real Dagster run: the day's serving log in, the audit queue and the sample out, with the
strata table and the budget in the materialization's metadata."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from rlhf_assets.annotation.queue import read_queue
from rlhf_assets.annotation.roster import Roster
from rlhf_assets.defs.annotation.audit_queue import audit_queue
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.storage import Storage
from rlhf_assets_tests.annotation.audit_support import log_rows, write_log


@pytest.mark.slow
def test_audit_queue_materializes_the_days_sample_for_the_roster(tmp_path, dagster_instance):
    root = tmp_path / "root"
    storage = Storage(str(root))
    day = write_log(storage, log_rows(200, texts=True, when=datetime.now(UTC)))
    for name in ("alice", "bob"):
        Roster(storage).add(name, expires_days=30)
    config = {"daily_label_budget": 30, "annotators_per_pair": 2, "clusters": 2, "auditors": ["nobody"]}
    result = dg.materialize([audit_queue], instance=dagster_instance, partition_key=day,
                            resources={"storage": StorageResource(root=str(root))},
                            run_config={"ops": {"audit_queue": {"config": config}}})
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    assert meta["served_pairs"] == 200 and meta["audited_pairs"] == 15
    assert meta["budget_labels"] == 30 and meta["budget_used_labels"] == meta["assignments"] == 30
    assert meta["annotators_from"] == "roster"
    strata = meta["strata_table"]
    assert sum(r.data["allocated"] for r in strata.records) == 15
    assert all(r.data["allocated"] >= 1 for r in strata.records)  # the floor
    queue = read_queue(storage, day, "audit")
    assert queue.height == 30 and set(queue["annotator_id"]) == {"alice", "bob"}
    assert storage.exists(storage.path("annotation", "audit", f"date={day}", "sample.parquet"))
