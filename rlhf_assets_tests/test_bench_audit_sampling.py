"""`rlhf bench audit-sampling`: its monitor's alarm rule, and a quick end-to-end run (tiny preset)."""

import numpy as np
import pytest

audit_bench = pytest.importorskip("bench.audit_sampling")


def _window(p, human, cluster):
    return [(human, p, np.ones(len(p)), cluster)]


def test_monitor_alarms_when_one_clusters_humans_stop_following_the_model_and_not_otherwise():
    rng = np.random.default_rng(0)
    n = 600
    p = 1 / (1 + np.exp(-1.5 * rng.normal(size=n)))
    cluster = np.repeat([0, 1, 2], n // 3)
    calibrated = (rng.random(n) < p).astype(float)
    assert not audit_bench.alarm(_window(p, calibrated, cluster), 3)
    drifted = np.where(cluster == 1, (rng.random(n) < 0.5).astype(float), calibrated)
    assert audit_bench.alarm(_window(p, drifted, cluster), 3)
    # too few effective pairs in a cluster: no verdict on it
    small = np.repeat([0, 1], [n - 5, 5])
    assert not audit_bench.alarm(_window(p, np.where(small == 1, 1 - (p > 0.5), calibrated), small), 2)


@pytest.mark.slow
def test_quick_benchmark_compares_stratified_and_uniform():
    out = audit_bench.cli(["--quick", "--json"])
    samplers = out["samplers"]
    assert list(samplers)[:2] == ["stratified", "uniform×1"]
    assert samplers["stratified"]["labels_per_day"] == samplers["uniform×1"]["labels_per_day"] == out["setup"]["budget"]
    assert [r["labels_per_day"] for r in samplers.values()][1:] == sorted(r["labels_per_day"]
                                                                          for r in list(samplers.values())[1:])
    for row in samplers.values():
        assert 0 <= row["detected"] <= 1 and row["false_alarms_per_100_checks"] >= 0
        assert row["mean_delay_days"] is None or 1 <= row["mean_delay_days"] <= out["setup"]["days"]
    assert isinstance(out["target_met"], bool)
    assert 0 <= out["stratified_share_in_region_after_change"] <= 1
    assert 0 < out["setup"]["region_in_one_sampler_cluster"] <= 1
    assert set(out["pre_change_estimate_error"]) == {"ht_weighted_mean", "ht_weighted_sd", "unweighted_mean",
                                                     "unweighted_sd"}
