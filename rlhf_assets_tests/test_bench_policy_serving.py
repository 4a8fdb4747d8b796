"""`python -m bench.policy_serving`: the benchmark runs end to end against a real `rlhf serve-policy` (a tiny policy,
two concurrency levels, seconds each) and reads the service's batch-size histogram."""

import pytest


@pytest.mark.slow
def test_policy_serving_benchmark_measures_throughput_latency_and_batches():
    from bench import policy_serving

    out = policy_serving.cli(["--concurrency", "1", "4", "--seconds", "2", "--hidden", "32", "--layers", "1",
                              "--json"])
    rows = {r["concurrency"]: r for r in out["rows"]}
    assert set(rows) == {1, 4}
    for row in rows.values():
        assert row["requests"] > 0 and row["errors"] == 0 and row["requests_per_s"] > 0
        assert row["p99_ms"] >= row["p50_ms"] > 0
        assert row["mean_batch"] is not None and row["mean_batch"] >= 1.0  # the service's rlhf_policy_batch_size
