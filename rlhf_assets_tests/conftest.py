import os
import uuid

import pytest

from rlhf_assets.storage import Storage
from rlhf_assets_tests.support import learnable_pairs, write_jsonl

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


class MotoOnLoopback:
    """moto's S3 server on a loopback port, which a test can stop (an outage) and start again on the same port.
    moto keeps its buckets in this process's backends, so what was stored before the outage is there after it."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server_class = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()
        self.running = True

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def start(self) -> None:
        if not self.running:
            self.server = self._server_class(ip_address=self.host, port=self.port, verbose=False)
            self.server.start()
            self.running = True


@pytest.fixture
def moto_server(monkeypatch):
    pytest.importorskip("moto")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    server = MotoOnLoopback()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(moto_server):
    return moto_server.endpoint


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


# PostgreSQL on loopback (initdb + pg_ctl; rlhf_assets_tests/postgres_server.py) ---------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    from rlhf_assets_tests.postgres_server import DEBIAN_BIN_GLOB, server_binaries, start_server, stop_server

    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL's initdb and pg_ctl are neither on PATH nor in {DEBIAN_BIN_GLOB}: `make postgresql` "
                    "installs Debian's postgresql package (needs Debian and root)")
    server = start_server(bin_dir)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def postgres_instance(postgres_server, tmp_path, monkeypatch):
    """A Dagster instance on a fresh database of the server, loaded from the repository's dagster.postgres.yaml
    (connection from the DAGSTER_PG_* variables, as in production) in its own DAGSTER_HOME."""
    import dagster as dg

    from rlhf_assets_tests.support import REPO

    database = postgres_server.create_database(f"dagster_{uuid.uuid4().hex[:12]}")
    for key, value in postgres_server.env(database).items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.postgres.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


# Tiny trained models (policy, evaluation and CLI tests) -------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """A tiny learnable RLHF set-up, trained once per session: prompts whose good answers are polite and helpful and
    whose bad answers are rude; a tiny reward model that has learned the difference; a tiny SFT policy trained on a
    MIX of both kinds of answer, so its samples vary and PPO has something to improve.

    (store root, reward-model artifact dir, SFT artifact dir, train prompts, held-out prompts, sft rows)."""
    import torch

    from rlhf_assets.policy.config import SFTConfig
    from rlhf_assets.policy.sft import train_sft
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.train import train_reward_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("policy")
    store = str(root / "store")
    pairs = learnable_pairs(240)
    rm = train_reward_model(RMConfig(preset="tiny", max_length=48, batch_size=16, epochs=4, lr=3e-3),
                           write_jsonl(root / "train.jsonl", pairs[:200]), write_jsonl(root / "val.jsonl", pairs[200:]),
                           root / "rm", store_root=store, progress=False)
    sft_rows = [{"prompt": p["prompt"], "response": p["chosen"] if i % 2 else p["rejected"]}
                for i, p in enumerate(pairs)]
    sft = train_sft(SFTConfig(epochs=3, max_prompt_tokens=24, max_response_tokens=16), sft_rows, root / "sft",
                    store_root=store)
    torch.set_num_threads(threads)
    held = [p["prompt"] for p in learnable_pairs(32, start=1000)]
    return {"store": store, "rm_dir": rm.artifact_dir, "rm_id": rm.artifact_id, "sft_dir": sft.artifact_dir,
            "sft_id": sft.artifact_id, "prompts": [p["prompt"] for p in pairs], "eval_prompts": held,
            "sft_rows": sft_rows, "root": root, "rm_val_accuracy": rm.metrics["val_accuracy"]}


# The `slow` marker (declared in pyproject.toml): tests that train models or run Dagster jobs (materialize,
# execute_in_process, the CLI commands that do either). `make test` runs everything; `make test-fast` runs the rest
# (-m "not slow"). Modules whose every test is slow are listed here, so a new test in one of them is slow by
# default; modules that mix quick tests with slow ones mark their slow tests with @pytest.mark.slow.
SLOW_MODULES = {
    "annotation/test_app_browser.py",
    "defs/test_kl_check.py", "defs/test_release_chain.py", "defs/test_release_lineage.py", "defs/test_ui_browser.py",
    "evaluation/test_release_judge.py", "evaluation/test_sequence_ope.py",
    "policy/test_kl_check.py", "policy/test_ppo_training.py", "policy/test_resume_and_entrypoint.py",
    "policy/test_small_preset.py", "reward/test_resume_and_ddp.py", "test_cli_ope.py", "test_cli_release.py",
}


def pytest_collection_modifyitems(config, items):
    root = os.path.dirname(__file__)
    missing = sorted(m for m in SLOW_MODULES if not os.path.isfile(os.path.join(root, m)))
    if missing:  # a renamed module would silently join the fast suite
        raise pytest.UsageError(f"SLOW_MODULES in {__file__} names missing modules: {missing}")
    for item in items:
        if os.path.relpath(str(item.fspath), root) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
