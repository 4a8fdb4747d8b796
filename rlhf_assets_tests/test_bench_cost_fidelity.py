"""Smoke test of `rlhf bench cost-fidelity --quick` (bench/cost_fidelity.py): one run gives every row of the table
with finite figures in range, through the real CLI. Structure only: timings on a shared machine are noise."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from rlhf_assets_tests.support import subprocess_env

pytestmark = pytest.mark.slow


def test_quick_run_reports_every_configuration():
    proc = subprocess.run([sys.executable, "-m", "rlhf_assets.cli", "bench", "cost-fidelity", "--quick", "--json"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [r["config"] for r in out["rows"]]
    assert names[:2] == ["tiny", "tiny+LoRA"] and names[2].startswith("student(1/2 layers")
    assert names[3].startswith("cascade(student→tiny")
    for r in out["rows"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ece"] <= 1, r
        assert r["train_cpu_s"] > 0 and r["p99_ms"] > 0 and r["items_per_s"] > 0, r
        assert math.isclose(r["acc_gain_per_cpu_h"], (r["accuracy"] - 0.5) / (r["train_cpu_s"] / 3600))
    cascade = out["cascade"]
    assert 0 <= cascade["share_escalated"] <= 1 and cascade["n"] == out["n_test"]
    assert out["rows"][3]["train_cpu_s"] == pytest.approx(out["rows"][0]["train_cpu_s"] + out["rows"][2]["train_cpu_s"])
    assert "cost vs fidelity" in proc.stdout
