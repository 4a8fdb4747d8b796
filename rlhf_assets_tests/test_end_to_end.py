"""The CI asset-check run: the demo's graph on the bundled sample, with a real temporary Dagster instance."""

import dagster as dg
import pytest

from rlhf_assets.demo import DEMO_DAYS, run_demo, summary_lines


@pytest.mark.slow
def test_demo_materializes_bundled_sample_and_every_check_passes(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for key in ("RLHF_PARTITIONS_START", "RLHF_PARTITIONS_END"):
        monkeypatch.setenv(key, "")  # recorded, so what run_demo sets is undone after the test
        monkeypatch.delenv(key)
    # the reward pillar has its own Dagster test on learnable data (test_reward_pillar.py)
    summary = run_demo(str(tmp_path / "rlhf"), str(tmp_path / "dagster"), reward_preset=None, progress=lambda m: None)
    assert summary["success"]
    assert set(summary["days"]) == set(DEMO_DAYS)
    for day, stats in summary["days"].items():
        assert stats["checks_failed"] == [], (day, stats)
        assert stats["checks_passed"] == 5  # 2 blocking, 2 warning, annotators_stable
        assert stats["rows_quarantined"] / stats["rows_in"] <= 0.05
        assert stats["accuracy_vs_simulator_truth"] >= 0.9
    # the runs live on the instance the UI would open
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert len(instance.get_runs()) == len(DEMO_DAYS)
    keys = instance.get_materialized_partitions(dg.AssetKey("aggregated_labels"))
    assert keys == set(DEMO_DAYS)
    # the UI opens it with daily partitions that start at the demo's first day and end after its last (make ui
    # reads rlhf.env; the summary prints the same)
    start, end = summary["ui_env"]["RLHF_PARTITIONS_START"], summary["ui_env"]["RLHF_PARTITIONS_END"]
    assert start == min(DEMO_DAYS) and end > max(DEMO_DAYS)
    saved = set((tmp_path / "dagster" / "rlhf.env").read_text().splitlines())
    assert {f"RLHF_PARTITIONS_START={start}", f"RLHF_PARTITIONS_END={end}"} <= saved
    assert f"RLHF_PARTITIONS_END={end}" in "\n".join(summary_lines(summary))


def test_squality_judgements_of_a_pair_land_on_one_day():
    from rlhf_assets.demo import _spread_squality
    from rlhf_assets.preference.sample_data import load_squality_comparisons
    from rlhf_assets.preference.schema import pair_id

    by_day = _spread_squality(load_squality_comparisons(), list(DEMO_DAYS))
    days_of_pair: dict[str, set[str]] = {}
    for day, rows in by_day.items():
        for r in rows:
            assert r["created_at"].startswith(day)
            days_of_pair.setdefault(pair_id(r["prompt"], r["response_a"], r["response_b"]), set()).add(day)
    assert len(days_of_pair) == 300 and all(len(d) == 1 for d in days_of_pair.values())
    assert sum(len(rows) for rows in by_day.values()) == 900
