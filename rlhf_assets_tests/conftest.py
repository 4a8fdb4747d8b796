import os

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture
def storage_root(tmp_path, monkeypatch):
    """A fresh local storage root; the Definitions read it from the environment."""
    root = tmp_path / "rlhf"
    monkeypatch.setenv("RLHF_STORAGE_ROOT", str(root))
    return root


@pytest.fixture
def dagster_instance():
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance
