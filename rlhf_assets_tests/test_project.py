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


#: Where Dagster may be imported: the wiring, and the commands that run it. Everything else is domain code — a new
#: module is covered by default.
DAGSTER_ALLOWED = ("defs/", "definitions.py", "cli.py", "demo.py", "instance.py")


def test_domain_code_does_not_import_dagster():
    """Only dagster_pipes, the protocol package made for external processes, may appear in domain code."""
    import re

    pattern = re.compile(r"^\s*(import|from)\s+dagster(?!_pipes)\b", re.MULTILINE)
    package = REPO / "rlhf_assets"
    checked = [p for p in package.rglob("*.py") if not p.relative_to(package).as_posix().startswith(DAGSTER_ALLOWED)]
    assert len(checked) > 60 and package / "storage.py" in checked and package / "config_schema.py" in checked
    for path in checked:
        assert not pattern.search(path.read_text()), path


#: The plain helper modules tests may import; fixtures come from conftest.py files, which pytest finds by name.
TEST_HELPER_MODULES = {"rlhf_assets_tests.support", "rlhf_assets_tests.records",
                       "rlhf_assets_tests.serving.service_support", "rlhf_assets_tests.policy_serving.policy_support",
                       "rlhf_assets_tests.defs.dagster_support", "rlhf_assets_tests.postgres_server",
                       "rlhf_assets_tests.k8s.k8s_support", "rlhf_assets_tests.annotation.app_support",
                       "rlhf_assets_tests.annotation.queue_support", "rlhf_assets_tests.annotation.audit_support",
                       "rlhf_assets_tests.counting_storage"}


def test_tests_import_only_plain_helper_modules_not_test_modules_or_conftests():
    """A fixture imported from another module is a separate copy (a session-scoped model trained again per
    importer), and helpers kept in test modules or conftest.py files tie unrelated tests together."""
    import ast

    tests = REPO / "rlhf_assets_tests"

    def module_name(path: Path) -> str:
        parts = path.relative_to(REPO).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def is_module(name: str) -> bool:
        path = REPO.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    for helper in TEST_HELPER_MODULES:
        assert is_module(helper) and not helper.rsplit(".", 1)[-1].startswith(("test_", "conftest")), helper
    offences = []
    for path in sorted(tests.rglob("*.py")):
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this file's package
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports from mod
                targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
            else:
                continue
            offences += [f"{path.relative_to(REPO)}:{node.lineno} imports {target}" for target in targets
                         if (target == "rlhf_assets_tests" or target.startswith("rlhf_assets_tests."))
                         and target not in TEST_HELPER_MODULES]
    assert not offences, "\n".join(offences)
