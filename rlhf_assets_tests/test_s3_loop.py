"""The whole loop on an s3:// storage root (moto's S3 server on loopback, real HTTP): landing zone and landing
sensor, the data pillar's tables, a release's dataset snapshot, artifacts, the registry, and `rlhf serve` as a real
process following the registry on S3, serving through an outage of the store and writing its whole log once the
store is back, read back by the sensors' log cursor."""

import json
import time

import dagster as dg
import httpx
import pytest

from rlhf_assets.automation.log_cursor import LogCursor, new_log_rows
from rlhf_assets.definitions import defs
from rlhf_assets.defs.sensors.ticking import evaluate
from rlhf_assets.preference.sample_data import load_hh_pairs
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.releases import create_release
from rlhf_assets.serving.log import read_serving_log
from rlhf_assets.storage import Storage, StorageSettings
from rlhf_assets_tests.defs.dagster_support import DAY, RELEASE
from rlhf_assets_tests.serving.service_support import make_store, start_server
from rlhf_assets_tests.support import wait_until

pytestmark = pytest.mark.slow  # runs Dagster jobs and a service process

FAST = {"attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 1.0, "read_timeout_s": 10.0}


@pytest.fixture
def s3_root(s3_storage, moto_server, tmp_path, monkeypatch):
    """The s3:// root named by the environment, as every entry point reads it, with a fast retry policy."""
    storage, client, bucket = s3_storage
    config = tmp_path / "storage.json"
    config.write_text(json.dumps(FAST))
    env = {"RLHF_STORAGE_ROOT": storage.uri, "RLHF_S3_ENDPOINT_URL": moto_server.endpoint,
           "RLHF_STORAGE_CONFIG": str(config), "RLHF_ARTIFACT_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fast = Storage(storage.uri, {"endpoint_url": moto_server.endpoint}, policy=StorageSettings(**FAST))
    return fast, client, bucket, env


def _keys(client, bucket):
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def _land(storage, pairs, seed, name=None):
    batch = simulate_comparisons(pairs, dates=[DAY], labels_per_pair=3, seed=seed)
    for day, (default_name, data) in landing_files(batch).items():
        storage.write_bytes(storage.landing_dir(day).joinpath(name or default_name), data)


def test_data_pillar_landing_sensor_and_dataset_snapshot_on_s3(s3_root, moto_server, dagster_instance):
    storage, client, bucket, _ = s3_root
    definitions = defs()
    pairs = load_hh_pairs(limit=40)
    _land(storage, pairs[:20], seed=2)
    first = evaluate("landing_sensor", dagster_instance, None, definitions).result
    (request,) = first.run_requests
    assert request.partition_key == DAY
    # the store goes down in the middle of the run (after its first table): the run fails, naming the path
    tables, write_parquet = [], Storage.write_parquet

    def stop_after_the_first_table(self, path, df):
        digest = write_parquet(self, path, df)
        tables.append(path.name)
        if len(tables) == 1:
            moto_server.stop()
        return digest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Storage, "write_parquet", stop_after_the_first_table)
        failed = definitions.resolve_job_def("data_pillar").execute_in_process(
            partition_key=DAY, instance=dagster_instance, tags=request.tags, raise_on_error=False)
    assert not failed.success
    errors = " ".join(str(e.event_specific_data.error) for e in failed.all_events if e.is_step_failure)
    assert "StorageUnavailable" in errors and "could not write s3://" in errors, errors[:2000]
    moto_server.start()
    # the server is back: the next run of the same request succeeds
    run = definitions.resolve_job_def("data_pillar").execute_in_process(
        partition_key=DAY, instance=dagster_instance, tags=request.tags)
    assert run.success
    idle = evaluate("landing_sensor", dagster_instance, first.cursor, definitions).result
    assert not idle.run_requests
    # a file landed later, seen by the same process (its S3 client and all): one more run, for that file only
    _land(storage, pairs[20:], seed=3, name="second.jsonl")  # (ingested by the next run, as test_sensors_data shows)
    more = evaluate("landing_sensor", dagster_instance, idle.cursor, definitions).result
    (second,) = more.run_requests
    assert second.tags["rlhf/files"] == "second.jsonl" and second.run_key != request.run_key
    assert storage.read_parquet(storage.table_path("aggregated_labels", DAY)).height == 20
    # a release's pinned dataset snapshot, on S3 too
    create_release(storage, key=RELEASE)
    dagster_instance.add_dynamic_partitions("release", [RELEASE])
    result = definitions.resolve_job_def("reward_pillar").execute_in_process(
        partition_key=RELEASE, instance=dagster_instance, asset_selection=[dg.AssetKey("preference_dataset")])
    assert result.success
    assert storage.read_parquet(storage.table_path("preference_dataset", RELEASE)).height == 20
    keys = _keys(client, bucket)
    assert f"prefix/tables/preference_dataset/{RELEASE}.manifest.json" in keys
    assert f"prefix/tables/validated_pairs/{DAY}.parquet" in keys
    assert any(k.startswith("prefix/datasets/sha256/") and k.endswith(".parquet") for k in keys)


def test_the_service_follows_the_registry_on_s3_and_serves_through_an_outage(s3_root, moto_server, tmp_path):
    storage, client, bucket, env = s3_root
    store = make_store(storage.uri, storage_options=storage.storage_options)
    registry = Registry(storage)
    registry.set_alias("production", "r20250601-2359", {"reward_model": store.rm[0], "calibration": store.calibration},
                       action="promote", reason="test", actor="test")
    # the service downloads the models from S3 into a cache of its own (hashes checked against the manifests)
    env = {**env, "RLHF_ONNX_CACHE": str(tmp_path / "onnx"), "RLHF_ARTIFACT_CACHE": str(tmp_path / "served")}
    server = start_server(store, "--log-flush-s", "0.3", "--reload-interval-s", "0.3", env=env)
    ids, code = [], None
    try:
        with server.client() as c:
            def score(i):
                r = c.post("/v1/score", json={"prompt": f"question {i}", "response": f"answer {i}"})
                assert r.status_code == 200, r.text
                ids.append(r.json()["request_id"])
                return r.json()

            assert score(0)["artifact_id"] == store.rm[0]
            # a promotion in the registry on S3 reaches the running service: hot reload
            registry.set_alias("production", "r20250602-2359", {"reward_model": store.rm[1]}, action="promote",
                               reason="test", actor="test")
            wait_until(lambda: score(len(ids))["artifact_id"] == store.rm[1], 30, poll_s=0.1)
            time.sleep(0.8)  # the log written so far is flushed
            moto_server.stop()  # the store goes down: the service keeps serving and buffers its log
            for _ in range(20):
                assert score(len(ids))["artifact_id"] == store.rm[1]
            wait_until(lambda: _log_rows(c, "failed") > 0, 15, poll_s=0.1)
            assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
            moto_server.start()
            wait_until(lambda: _log_rows(c, "written") == len(ids), 20, poll_s=0.1)
            assert _log_rows(c, "dropped") == 0
        code = server.terminate()
    finally:
        if code is None:
            server.terminate()
    assert code == 0
    assert {p.name for p in (tmp_path / "served").iterdir()} >= {store.rm[0], store.rm[1], store.calibration}
    log = read_serving_log(storage)
    assert sorted(log["request_id"]) == sorted(ids)  # rows in = rows out, each once
    rows, _ = new_log_rows(storage, LogCursor())  # what the monitoring sensors read
    assert rows.height == len(ids) and set(rows["artifact_id"]) == set(store.rm)


def _log_rows(client, outcome):
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("rlhf_rm_serving_log_rows_total") and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
