"""`rlhf release list` and `rlhf release rollback` through the real console entry point, on a real (SQLite)
Dagster instance in DAGSTER_HOME: promote r1, promote r2, `rlhf release rollback r1`; rollback to a release that
went live only through an override; a canary-only and a never-deployed release are refused (exit 2)."""

import json
import os
import subprocess
import sys

from rlhf_assets.references import DecisionRef, write_reference
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
        write_reference(storage, "deployment_decision", key,
                        DecisionRef(release=key, verdict="promote", artifacts={"policy": policy}))
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
    assert missing.returncode == 2, missing.stdout
    assert "r20990101-0000 never held production" in missing.stderr and f"did: {R1}, {R2}" in missing.stderr
    assert len(json.loads(rlhf(env, "list", "--json").stdout)["history"]) == 3


def test_rollback_restores_an_override_and_refuses_a_canary_only_release(tmp_path):
    """r1 (verdict reject) went live by an approved override, r2 was promoted, r3 is only a canary. `rollback r3`
    exits 2 naming r1 and r2 and moves nothing; `rollback r1` restores exactly r1's overridden artifacts, through a
    Dagster run of production_release. (The history is set up with apply_decision, the function that asset calls.)"""
    import dagster as dg

    from rlhf_assets.instance import TEMPLATE
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.registry.deployment import apply_decision

    root, home = tmp_path / "rlhf", tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(TEMPLATE.read_text())
    env = {**os.environ, "RLHF_STORAGE_ROOT": str(root), "DAGSTER_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
    storage = Storage(str(root))
    store = ArtifactStore(storage)
    r1, r2, r3 = R1, R2, "r20250603-2359"
    verdicts = {r1: "reject", r2: "promote", r3: "canary"}
    decisions = {}
    for key, verdict in verdicts.items():
        create_release(storage, key=key)
        arts = {}
        for name in ("policy", "reward_model"):
            payload = tmp_path / f"{key}-{name}"
            payload.mkdir()
            (payload / "w.bin").write_text(payload.name)
            arts[name] = store.put_dir(payload, kind="policy_stub", manifest={}).id
        decisions[key] = {"release": key, "verdict": verdict, "reasons": [], "artifacts": arts, "canary_share": 0.2}
        write_reference(storage, "deployment_decision", key, DecisionRef(**decisions[key]))
        storage.write_json(storage.path("registry", "decisions", f"{key}.json"), decisions[key])
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("release", list(verdicts))
    instance.dispose()
    assert apply_decision(storage, r1, decisions[r1], override_reason="hotfix", approver="ana")["action"] == "override"
    assert apply_decision(storage, r2, decisions[r2])["action"] == "promote"
    assert apply_decision(storage, r3, decisions[r3])["action"] == "canary"
    before = Registry(storage).history()

    canary_only = rlhf(env, "rollback", r3)
    assert canary_only.returncode == 2, canary_only.stdout
    assert f"{r3} never held production" in canary_only.stderr and f"did: {r1}, {r2}" in canary_only.stderr
    assert Registry(storage).history() == before

    back = rlhf(env, "rollback", r1)
    assert back.returncode == 0, back.stderr[-2000:]
    out = json.loads(back.stdout)
    assert out["action"] == "rollback" and out["aliases"] == {"production": r1, "canary": r3}
    reg = Registry(storage)
    assert reg.current("production")["artifacts"] == decisions[r1]["artifacts"]
    last = reg.history()[-1]
    assert (last["alias"], last["action"], last["release"], last["from_release"]) == ("production", "rollback", r1, r2)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="apply_release_decision"))  # visible in the UI
        assert run.tags["dagster/partition"] == r1
