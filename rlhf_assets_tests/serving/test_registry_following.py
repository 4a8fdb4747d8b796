"""The service follows the registry: canary share and stickiness, promotion and rollback under continuous load with
zero failed requests, and SIGTERM draining in-flight requests and flushing the serving log."""

import threading
import time
from collections import Counter

import httpx
import polars as pl
import pytest

from rlhf_assets.serving.log import LOG_SCHEMA, read_serving_log
from rlhf_assets_tests.serving.service_support import AUTH, start_server
from rlhf_assets_tests.support import wait_until

pytestmark = pytest.mark.slow  # real servers under load for several seconds each


def _score(url, i, key=None):
    body = {"prompt": f"question {i}", "response": f"answer {i % 7}"}
    if key is not None:
        body["key"] = key
    return httpx.post(url + "/v1/score", json=body, headers=AUTH, timeout=30)


def test_canary_gets_its_share_sticky_per_key(fresh_store):
    fresh_store.promote("r20250602-2359", fresh_store.rm[1], alias="canary", share=0.3, action="canary")
    server = start_server(fresh_store)
    try:
        with server.client() as c:
            assert c.post("/admin/reload").json()["canary"]["artifact_id"] == fresh_store.rm[1]
            by_key = {}
            for i in range(300):
                out = c.post("/v1/score", json={"prompt": "p", "response": f"r{i}"},
                             headers={"X-Request-Key": f"user-{i}"}).json()
                by_key[f"user-{i}"] = (out["artifact_id"], out["alias"])
            share = sum(a == "canary" for _, a in by_key.values()) / len(by_key)
            assert 0.2 < share < 0.4, share
            assert all(m == fresh_store.rm[1] for m, a in by_key.values() if a == "canary")
            for key in list(by_key)[:20]:  # the same key always sees the same model (header or body field)
                again = c.post("/v1/score", json={"prompt": "x", "response": "y", "key": key}).json()
                assert (again["artifact_id"], again["alias"]) == by_key[key]
            keyless = Counter(c.post("/v1/score", json={"prompt": "p", "response": f"q{i}"}).json()["alias"]
                              for i in range(200))
            assert 30 < keyless["canary"] < 90  # without a key: per request
    finally:
        assert server.terminate() == 0


def test_promotion_and_rollback_reach_the_service_under_load_with_no_failed_request(fresh_store):
    server = start_server(fresh_store, "--cache-entries", "0")
    seen, failures, stop = [], [], threading.Event()

    def load(worker):
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/v1/score", json={"prompt": f"w{worker}", "response": f"r{i}"})
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    seen.append((time.monotonic(), r.json()["artifact_id"]))
                i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        def wait_for(model, timeout=20):
            wait_until(lambda: bool(seen) and seen[-1][1] == model and len({m for _, m in seen[-20:]}) == 1,
                       timeout, what=f"the service to switch to {model}")

        time.sleep(1.0)
        fresh_store.promote("r20250602-2359", fresh_store.rm[1])            # a promotion
        wait_for(fresh_store.rm[1])
        fresh_store.promote("r20250601-2359", fresh_store.rm[0], fresh_store.calibration, action="rollback")
        wait_for(fresh_store.rm[0])                                          # a rollback
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        code = server.terminate()
    assert not failures, failures[:3]
    order = [m for _, m in seen]
    switches = [b for a, b in zip(order, order[1:]) if a != b]
    assert fresh_store.rm[1] in switches and switches[-1] == fresh_store.rm[0]
    assert len(seen) > 100 and code == 0


def test_sigterm_drains_in_flight_requests_and_flushes_the_log(fresh_store):
    # a 300 ms batching window keeps requests in flight when the signal arrives; the flush interval is long, so only
    # the shutdown flush can have written the rows. On a loaded machine a request may not have connected yet when the
    # listener closes: it is refused at connect, legitimately not "in flight"; every request the server took must
    # complete and be logged.
    server = start_server(fresh_store, "--max-wait-ms", "300", "--max-batch-size", "64", "--log-flush-s", "3600")
    results, refused = [], []

    def call(i):
        try:
            results.append(_score(server.url, i, key=f"k{i}"))
        except httpx.ConnectError:
            refused.append(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    code = server.terminate()
    for t in threads:
        t.join()
    assert code == 0
    assert len(results) + len(refused) == 12 and results, (len(results), refused)
    assert [r.status_code for r in results] == [200] * len(results)  # none cut off mid-request
    log = read_serving_log(fresh_store.storage)
    assert log.height == len(results) and dict(log.schema) == LOG_SCHEMA
    assert set(log["request_id"]) == {r.json()["request_id"] for r in results}
    assert log["artifact_id"].unique().to_list() == [fresh_store.rm[0]]
    assert log["release"].unique().to_list() == ["r20250601-2359"]
    assert log["embedding"].arr.len().unique().to_list() == [32]
    assert log["key_hash"].null_count() == 0 and log["prompt"].str.starts_with("question").all()
    assert sorted(log["score"].to_list()) == pytest.approx(sorted(r.json()["score"] for r in results))


def test_serving_log_rows_for_compare_and_without_texts(fresh_store):
    server = start_server(fresh_store, "--no-log-texts")
    with server.client() as c:
        c.post("/v1/compare", json={"items": [{"prompt": "p", "response_a": "a", "response_b": "b"}] * 3})
        c.post("/v1/score", json={"prompt": "p", "response": "a"})  # a cache hit of the first compare's a-side
    assert server.terminate() == 0
    log = read_serving_log(fresh_store.storage)
    compare = log.filter(pl.col("endpoint") == "compare")
    assert compare.height == 6 and compare["side"].to_list() == ["a", "b"] * 3
    assert compare["p_a"].null_count() == 0 and log["prompt"].null_count() == log.height  # texts off
    score = log.filter(pl.col("endpoint") == "score")
    assert score["cache_hit"].to_list() == [True] and score["p_a"].null_count() == 1
