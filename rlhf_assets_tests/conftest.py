import os
import uuid

import pytest

from rlhf_assets.storage import Storage

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


# S3 on loopback (moto server) ----------------------------------------------------------------------------


@pytest.fixture
def s3_endpoint(monkeypatch):
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_endpoint):
    import boto3

    # moto's backends are process-global (every server in this process shares them): one fresh bucket per test.
    bucket = f"rlhf-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    storage = Storage(f"s3://{bucket}/prefix", {"endpoint_url": s3_endpoint})
    yield storage, client, bucket
    # s3fs caches filesystem instances by their options; drop ours so no later test talks to a dead server.
    storage.root.fs.clear_instance_cache()


# The `slow` marker (declared in pyproject.toml): tests that train models or run Dagster jobs. `make test` runs
# everything; `make test-fast` runs the rest (-m "not slow"). Listed by module, so a new test in one of these
# modules is slow by default.
SLOW_MODULES = {
    "defs/test_checks_lookup.py", "defs/test_data_pillar.py", "defs/test_release_chain.py",
    "defs/test_release_lineage.py", "defs/test_reward_pillar.py", "defs/test_kl_check.py",
    "evaluation/test_mis.py", "evaluation/test_release_judge.py", "evaluation/test_sequence_ope.py",
    "policy/test_kl_check.py", "policy/test_ppo_training.py", "policy/test_resume_and_entrypoint.py",
    "reward/test_resume_and_ddp.py", "reward/test_training.py", "test_cli_ope.py", "test_cli_release.py",
    "test_bench_policy.py", "test_bench_reward.py", "test_end_to_end.py",
}


def pytest_collection_modifyitems(config, items):
    root = os.path.dirname(__file__)
    for item in items:
        if os.path.relpath(str(item.fspath), root) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
