"""The HTTP API against a real `rlhf serve` on loopback: auth, every bad input, pinned versions, calibrated compare,
metrics with version labels, the cache."""

import json
import socket
import time

import httpx
import pytest

from rlhf_assets.reward.calibration import calibrator_from_dict
from rlhf_assets_tests.serving.service_support import AUTH, PLATT

ITEM = {"prompt": "how do I bake bread?", "response": "mix flour, water and yeast, then bake it"}


def test_starts_and_reports_its_version(server, serve_store):
    # how fast it starts is measured by bench/serving.py, not asserted here (a loaded machine is not a slow server)
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["production"]["artifact_id"] == serve_store.rm[0]
    assert ready["production"]["release"] == "r20250601-2359"
    assert ready["production"]["calibration_id"] == serve_store.calibration


def test_auth_missing_wrong_and_right_token(server):
    assert httpx.post(server.url + "/v1/score", json=ITEM).status_code == 401
    wrong = httpx.post(server.url + "/v1/score", json=ITEM, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.post(server.url + "/v1/score", json=ITEM, headers={"Authorization": AUTH["Authorization"][7:]}
                      ).status_code == 401  # no "Bearer"
    assert httpx.post(server.url + "/v1/score", json=ITEM, headers=AUTH).status_code == 200
    assert httpx.get(server.url + "/healthz").status_code == 200  # probes need no token
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.post(server.url + "/admin/reload").status_code == 401


def test_score_returns_the_model_that_scored(server, serve_store):
    with server.client() as c:
        one = c.post("/v1/score", json=ITEM).json()
        assert isinstance(one["score"], float) and one["artifact_id"] == serve_store.rm[0]
        assert one["alias"] == "production" and one["release"] == "r20250601-2359" and not one["truncated"]
        many = c.post("/v1/score", json={"items": [ITEM, {"prompt": "", "response": "ok"}]}).json()["items"]
        assert len(many) == 2 and many[0]["score"] == pytest.approx(one["score"], abs=1e-5)
        assert all(m["artifact_id"] == serve_store.rm[0] for m in many)
        again = c.post("/v1/score", json=ITEM).json()
        assert again["cached"] is True and again["score"] == one["score"]


def test_long_texts_are_truncated_as_in_training_and_flagged(server):
    with server.client() as c:
        out = c.post("/v1/score", json={"prompt": "word " * 500, "response": "fine"}).json()
        assert out["truncated"] is True and out["truncated_part"] == "prompt" and out["tokens"] <= 64
        out = c.post("/v1/score", json={"prompt": "", "response": "word " * 500}).json()
        assert out["truncated_part"] == "response"


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b"   ", 400, None),
    (b"[1, 2]", 400, None),
    (b'"a string"', 400, None),
    (b"{}", 422, "prompt"),
    (b'{"prompt": "p"}', 422, "response"),
    (b'{"prompt": 3, "response": "r"}', 422, "prompt"),
    (b'{"prompt": "p", "response": null}', 422, "response"),
    (b'{"prompt": "p", "response": "a\\u0000b"}', 422, "response"),
    (b'{"items": "x"}', 422, "items"),
    (b'{"items": []}', 422, "items"),
    (b'{"items": [{"prompt": "p", "response": "r"}, 5]}', 422, "items[1]"),
    (b'{"items": [{"prompt": "p", "response": 1}]}', 422, "items[0].response"),
    (json.dumps({"items": [ITEM] * 9}).encode(), 422, "items"),
    (b'{"prompt": "p", "response": "r", "key": 7}', 422, "key"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_never_reaches_a_model(server, body, status, field):
    with server.client() as c:
        r = c.post("/v1/score", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert r.json()["field"] == field and r.json()["error"]


def test_compare_bad_input_names_its_fields(server):
    with server.client() as c:
        r = c.post("/v1/compare", json={"prompt": "p", "response_a": "a"})
        assert r.status_code == 422 and r.json()["field"] == "response_b"


def test_a_body_over_the_limit_is_refused_while_it_is_read(server):
    with server.client() as c:  # declared too large: refused before reading it
        r = c.post("/v1/score", content=b"x" * 70_000, headers={"content-type": "application/json"})
        assert r.status_code == 413
    # no Content-Length (chunked), 20 MB on offer: the server answers 413 after ~64 KiB, not after buffering it all
    host, port = server.url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode() +
                  b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk, sent, reply = b"a" * 16384, 0, b""
        s.settimeout(0.05)
        while sent < 20_000_000 and b"\r\n\r\n" not in reply:
            try:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            except OSError:
                break
            try:
                reply += s.recv(65536)
            except TimeoutError:
                pass
        s.settimeout(5)
        while b"\r\n\r\n" not in reply:
            reply += s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413") and sent < 2_000_000, (reply[:100], sent)
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_pinned_version_and_unknown_ids(server, serve_store):
    with server.client() as c:
        r = c.post(f"/v1/models/{serve_store.rm[1]}/score", json=ITEM)
        assert r.status_code == 200 and r.json()["artifact_id"] == serve_store.rm[1]
        assert r.json()["alias"] == "version"
        prefix = c.post(f"/v1/models/{serve_store.rm[1][:12]}/score", json=ITEM).json()
        assert prefix["artifact_id"] == serve_store.rm[1]
        unknown = c.post("/v1/models/" + "0" * 64 + "/score", json=ITEM)
        assert unknown.status_code == 404 and unknown.json()["field"] == "artifact_id"
        assert serve_store.rm[0] in unknown.json()["error"]  # names the loaded ids
        not_a_reward_model = c.post(f"/v1/models/{serve_store.calibration}/score", json=ITEM)
        assert not_a_reward_model.status_code == 404


def test_compare_is_calibrated_with_the_release_calibration(server, serve_store):
    with server.client() as c:
        out = c.post("/v1/compare", json={"prompt": "p", "response_a": "a good answer", "response_b": "go away",
                                          "key": "k1"}).json()
    expected = calibrator_from_dict(PLATT).predict([out["score_a"] - out["score_b"]])[0]
    assert out["calibrated"] is True and out["calibration_id"] == serve_store.calibration
    assert out["p_a"] == pytest.approx(expected, abs=1e-9)


def test_metrics_carry_the_version(server, serve_store):
    with server.client() as c:
        c.post("/v1/score", json={"items": [ITEM, {"prompt": "a", "response": "b"}]})
        text = c.get("/metrics").text
    model = serve_store.rm[0]
    assert (f'rlhf_rm_model_info{{alias="production",backend="torch",model="{model}",'
            f'release="r20250601-2359"}} 1.0') in text
    assert f'rlhf_rm_requests_total{{alias="production",code="200",endpoint="score",model="{model}"}}' in text
    for series in ("rlhf_rm_request_latency_seconds_bucket", "rlhf_rm_queue_seconds_bucket",
                   "rlhf_rm_batch_size_bucket", "rlhf_rm_cache_total", "rlhf_rm_in_flight"):
        assert series in text
    assert 'code="500"' not in text  # no bad input above became a server error


def test_overload_is_refused_before_any_batch_with_retry_after(serve_store):
    from concurrent.futures import ThreadPoolExecutor

    from rlhf_assets_tests.serving.service_support import start_server

    server = start_server(serve_store, "--max-in-flight", "2", "--max-wait-ms", "200", "--cache-entries", "0")
    try:
        def one(i):
            t = time.perf_counter()
            r = httpx.post(server.url + "/v1/score", json={"prompt": f"p{i}", "response": "r"}, headers=AUTH,
                           timeout=30)
            return r.status_code, time.perf_counter() - t, r.headers.get("retry-after")

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(32)))
        refused = [r for r in results if r[0] == 429]
        assert refused and all(r[2] == "1" for r in refused)
        accepted = [r for r in results if r[0] == 200]
        assert accepted and {r[0] for r in results} <= {200, 429}
        # at once: a refused request never reaches a batch — the model scored exactly the accepted items (one each,
        # cache off) and every refusal is counted (how fast a refusal is, is measured by bench/serving.py's overload
        # run, not asserted here: a loaded machine is not a slow server)
        from prometheus_client.parser import text_string_to_metric_families

        metrics: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(server.url + "/metrics", headers=AUTH).text):
            for sample in family.samples:  # summed over the label sets (model, alias)
                metrics[sample.name] = metrics.get(sample.name, 0.0) + sample.value
        assert metrics["rlhf_rm_items_total"] == len(accepted)
        assert metrics["rlhf_rm_overload_rejections_total"] == len(refused)
    finally:
        server.terminate()
