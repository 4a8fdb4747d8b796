"""Project-level facts a clean clone relies on."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_packaged_instance_config_matches_repository_dagster_yaml():
    packaged = REPO / "rlhf_assets" / "dagster_local.yaml"
    assert packaged.read_text() == (REPO / "dagster.yaml").read_text()
    config = yaml.safe_load(packaged.read_text())
    assert config["telemetry"]["enabled"] is False
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False


def test_ci_calls_make_test_only():
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert "make test" in lines
    assert not any("pip install" in ln for ln in lines)


def test_workspace_loads_one_code_location():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert [e["python_module"]["location_name"] for e in workspace["load_from"]] == ["rlhf_assets"]


def test_domain_packages_do_not_import_dagster():
    """Only dagster_pipes, the protocol package made for external processes, may appear in domain code."""
    import re

    pattern = re.compile(r"^\s*(import|from)\s+dagster(?!_pipes)\b", re.MULTILINE)
    for package in ("preference", "reward", "registry", "policy", "evaluation"):
        for path in (REPO / "rlhf_assets" / package).rglob("*.py"):
            assert not pattern.search(path.read_text()), path
    storage = (REPO / "rlhf_assets" / "storage.py").read_text()
    assert "dagster" not in storage
