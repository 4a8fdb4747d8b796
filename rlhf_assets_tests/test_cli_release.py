"""`rlhf release list` and `rlhf release rollback` through the real console entry point, on a real (SQLite)
Dagster instance in DAGSTER_HOME: promote r1, promote r2, `rlhf release rollback r1`."""

import json
import os
import subprocess
import sys

from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.registry.releases import create_release
from rlhf_assets.storage import Storage

R1, R2 = "r20250601-2359", "r20250602-2359"


def rlhf(env, *args):
    return subprocess.run([sys.executable, "-m", "rlhf_assets.cli", "release", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_release_list_and_rollback_through_dagster(tmp_path):
    root, home = tmp_path / "rlhf", tmp_path / "dagster"
    env = {**os.environ, "RLHF_STORAGE_ROOT": str(root), "DAGSTER_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
    storage = Storage(str(root))
    store = ArtifactStore(storage)
    for key in (R1, R2):
        assert subprocess.run([sys.executable, "-m", "rlhf_assets.cli", "release", "create", "--key", key],
                              capture_output=True, text=True, env=env, timeout=120).returncode == 0
        create_release(storage, key=key)
        payload = tmp_path / key
        payload.mkdir()
        (payload / "w.bin").write_text(key)
        policy = store.put_dir(payload, kind="policy_stub", manifest={}).id
        storage.write_json(storage.table_path("deployment_decision", key).with_suffix(".json"),
                           {"release": key, "verdict": "promote", "reasons": [], "artifacts": {"policy": policy}})
        storage.write_json(storage.path("registry", "decisions", f"{key}.json"),
                           {"release": key, "verdict": "promote", "artifacts": {"policy": policy}})
        promoted = rlhf(env, "promote", key)
        assert promoted.returncode == 0, promoted.stderr[-2000:]
        assert json.loads(promoted.stdout)["aliases"]["production"] == key
    back = rlhf(env, "rollback", R1)
    assert back.returncode == 0, back.stderr[-2000:]
    out = json.loads(back.stdout)
    assert out["action"] == "rollback" and out["aliases"]["production"] == R1
    listing = json.loads(rlhf(env, "list", "--json").stdout)
    assert listing["aliases"] == {"production": R1, "canary": None}
    assert [r["release"] for r in listing["releases"]] == [R1, R2]
    assert all(r["verdict"] == "promote" for r in listing["releases"])
    assert [(h["release"], h["action"]) for h in listing["history"]] == [(R1, "promote"), (R2, "promote"),
                                                                       (R1, "rollback")]
    assert set(listing["history"][0]) >= {"time", "alias", "release", "action", "reason"}
    missing = rlhf(env, "rollback", "r20990101-0000")
    assert missing.returncode == 2 and "no deployment decision" in missing.stderr
