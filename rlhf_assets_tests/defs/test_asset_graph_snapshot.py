"""The asset graph as a reviewed snapshot (as dagster-open-platform's test_defs.py does): keys, groups, partitions,
kinds, owners, descriptions, deps and check specs of every asset. An intended change to the graph regenerates it
with ``RLHF_UPDATE_SNAPSHOT=1 pytest rlhf_assets_tests/defs/test_asset_graph_snapshot.py`` and shows in review."""

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("asset_graph_snapshot.json")


def _graph() -> dict:
    from rlhf_assets.definitions import defs

    d = defs()
    graph = d.resolve_asset_graph()
    checks: dict[str, list] = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        checks.setdefault(key.asset_key.to_user_string(), []).append({
            "name": key.name, "blocking": spec.blocking, "partitioned": spec.partitions_def is not None,
            "description": spec.description})
    out = {}
    for spec in sorted(d.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string()):
        name = spec.key.to_user_string()
        out[name] = {
            "group": spec.group_name, "kinds": sorted(spec.kinds),
            "partitions": str(spec.partitions_def) if spec.partitions_def else None,
            "owners": list(spec.owners), "description": spec.description,
            "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
            "checks": sorted(checks.get(name, []), key=lambda c: c["name"]),
        }
    return out


def test_asset_graph_matches_the_reviewed_snapshot():
    graph = json.loads(json.dumps(_graph()))
    if os.environ.get("RLHF_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(graph, indent=2, ensure_ascii=False) + "\n")
    assert graph == json.loads(SNAPSHOT.read_text()), (
        "the asset graph changed; if intended, regenerate with RLHF_UPDATE_SNAPSHOT=1 and review the diff")
    assert all(a["description"] for a in graph.values()), "every asset needs a docstring (the UI description)"
    unlabelled = [name for name, a in graph.items() if not (a["group"] and a["kinds"] and a["owners"])]
    assert not unlabelled, f"every asset needs a group, kinds and owners (defs/owners.py) for the UI: {unlabelled}"
    blocking = {(a, c["name"]) for a, v in graph.items() for c in v["checks"] if c["blocking"]}
    assert {("validated_pairs", "quarantine_rate"), ("ppo_policy", "kl_within_budget")} <= blocking
    # every check carries its asset's partitions, but the served-traffic checks: the sensors report one evaluation per
    # window, and Dagster stores one runless evaluation per check and partition at most (defs/monitoring/checks.py)
    unpartitioned = {(a, c["name"]) for a, v in graph.items() for c in v["checks"] if not c["partitioned"]}
    assert unpartitioned == {("serving_log", "human_rm_correlation"), ("serving_log", "score_drift"),
                             ("serving_log", "prompt_drift")}
