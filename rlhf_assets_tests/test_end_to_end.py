"""The CI asset-check run: the demo's graph on the bundled sample, with a real temporary Dagster instance."""

import dagster as dg

from rlhf_assets.demo import DEMO_DAYS, run_demo


def test_demo_materializes_bundled_sample_and_every_check_passes(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    summary = run_demo(str(tmp_path / "rlhf"), str(tmp_path / "dagster"), progress=lambda m: None)
    assert summary["success"]
    assert set(summary["days"]) == set(DEMO_DAYS)
    for day, stats in summary["days"].items():
        assert stats["checks_failed"] == [], (day, stats)
        assert stats["checks_passed"] == 4
        assert stats["rows_quarantined"] / stats["rows_in"] <= 0.05
        assert stats["accuracy_vs_simulator_truth"] >= 0.9
    # the runs live on the instance the UI would open
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert len(instance.get_runs()) == len(DEMO_DAYS)
    keys = instance.get_materialized_partitions(dg.AssetKey("aggregated_labels"))
    assert keys == set(DEMO_DAYS)
