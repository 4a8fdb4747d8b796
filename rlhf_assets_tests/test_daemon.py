"""The real daemon: `dagster-daemon run` on a temporary instance and workspace, the landing sensor turned on with the
`dagster` CLI, a file dropped into the landing zone, and the data-pillar run it requests observed to complete."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from rlhf_assets.instance import TEMPLATE
from rlhf_assets.preference.sample_data import load_hh_pairs
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.storage import Storage

pytestmark = pytest.mark.slow

DAY = "2025-06-01"
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(home: Path, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update({"DAGSTER_HOME": str(home), "RLHF_STORAGE_ROOT": str(root), "RLHF_PARTITIONS_START": DAY,
                "RLHF_PARTITIONS_END": "2025-06-02", "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)})
    return env


def test_the_daemon_runs_the_landing_sensor_and_the_data_pillar(tmp_path):
    home, root = tmp_path / "dagster", tmp_path / "rlhf"
    home.mkdir()
    (home / "dagster.yaml").write_text(TEMPLATE.read_text())
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text((REPO / "workspace.yaml").read_text())
    env = _env(home, root)
    started = subprocess.run([str(BIN / "dagster"), "sensor", "start", "landing_sensor", "-w", str(workspace)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        storage = Storage(str(root))
        batch = simulate_comparisons(load_hh_pairs(limit=30), dates=[DAY], labels_per_pair=3, seed=5)
        for day, (name, data) in landing_files(batch).items():
            storage.write_bytes(storage.landing_dir(day).joinpath(name), data)
        instance = dg.DagsterInstance.from_config(str(home))
        deadline, runs = time.monotonic() + 300, []
        while time.monotonic() < deadline:
            runs = instance.get_runs(dg.RunsFilter(job_name="data_pillar"))
            if runs and runs[0].status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
                break
            assert daemon.poll() is None, daemon.stderr.read()[-3000:]
            time.sleep(2)
        assert runs, "the landing sensor never requested a run"
        (run,) = runs
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == DAY and run.tags["rlhf/trigger"] == "landing"
        assert run.tags["dagster/sensor_name"] == "landing_sensor"
        assert storage.table_path("aggregated_labels", DAY).exists()
        instance.dispose()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
