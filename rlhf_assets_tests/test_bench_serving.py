"""`rlhf bench serving --quick`: the benchmark runs end to end (tiny preset, naive vs ours, cache hits)."""

import pytest


@pytest.mark.slow
def test_quick_serving_benchmark_measures_naive_and_ours(capsys):
    from bench import serving

    out = serving.cli(["--quick", "--json"])
    rows = {(r["server"], r["concurrency"]): r for r in out["rows"]}
    assert set(rows) == {(s, c) for s in ("naive", "torch", "cached") for c in (1, 8)}
    for row in rows.values():
        assert row["ok"] > 0 and row["errors"] == 0 and row["items_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"]
    assert rows[("naive", 8)]["mean_batch"] == 1.0  # one forward per request
    assert rows[("torch", 8)]["mean_batch"] >= 1.0 and 0 < rows[("torch", 8)]["peak_share"] < 1
