"""`rlhf serve-policy` on a real uvicorn server (loopback): a policy pushed far from its reference is caught by the KL
guard and replaced by the reference's answer, the reference-identical canary passes untouched (KL exactly 0), a
response filter and the reward-model classifier (a real `rlhf serve` over HTTP) refuse in refuse mode, bad input is
a 4xx, the metrics count it all, and SIGTERM exits 0 with the log flushed — in the behaviour-log schema OPE reads,
with log-probs a teacher-forced rescoring reproduces."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import polars as pl
import pytest

from rlhf_assets.evaluation.logged import validate_log
from rlhf_assets.policy.artifacts import load_policy
from rlhf_assets.policy.inference import teacher_forced_logprobs
from rlhf_assets.policy_serving.log import read_policy_log
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.serving.pool import key_share
from rlhf_assets.storage import Storage
from rlhf_assets_tests.policy_serving.policy_support import CLEAN, DRIFTED, make_policy_store, start_policy_server
from rlhf_assets_tests.serving.service_support import ServeStore, start_server
from rlhf_assets_tests.support import metric

PROMPTS = ["How do I bake bread?", "Tell me about the moon.", "What is a good name for a cat?"]
KL_LIMIT = 2.0


def _key(canary: bool, share: float = 0.5) -> str:
    return next(k for k in (f"user-{i}" for i in range(1000)) if (key_share(k) < share) == canary)


@pytest.fixture(scope="module")
def policy_store(tmp_path_factory):
    """production: the drifted policy (DRIFTED); canary (half the keys): the reference itself as the policy."""
    store = make_policy_store(tmp_path_factory.mktemp("policy-serve"))
    store.promote(DRIFTED, store.drifted)
    store.promote(CLEAN, store.reference, alias="canary", share=0.5)
    return store


@pytest.fixture(scope="module")
def server(policy_store):
    s = start_policy_server(policy_store.root, "--kl-limit", str(KL_LIMIT), "--on-guard", "reference",
                            "--max-client-batch", "4", "--max-body-bytes", "4096")
    yield s
    s.terminate()


def test_kl_guard_replaces_the_drifted_policy_and_passes_its_reference(server, policy_store):
    with server.client() as c:
        r = c.post("/v1/generate", json={"items": [{"prompt": p} for p in PROMPTS], "key": _key(canary=False)})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) == 3
        for item in items:
            assert item["alias"] == "production" and item["policy_id"] == policy_store.drifted
            assert item["reference_id"] == policy_store.reference and item["release"] == DRIFTED
            assert item["kl"] > KL_LIMIT and item["guarded"] and item["served"] == "reference"
            assert item["reasons"][0].startswith("kl: ") and f"limit {KL_LIMIT}" in item["reasons"][0]
        clean = c.post("/v1/generate", json={"prompt": PROMPTS[0]}, headers={"X-Request-Key": _key(canary=True)})
        assert clean.status_code == 200, clean.text
        one = clean.json()
        assert one["alias"] == "canary" and one["policy_id"] == policy_store.reference and one["release"] == CLEAN
        assert one["kl"] == 0.0 and not one["guarded"] and one["served"] == "policy" and one["reasons"] == []
        metrics = c.get("/metrics").text
    d = policy_store.drifted
    assert metric(metrics, "rlhf_policy_guarded_total", model=d, alias="production", rule="kl") == 3
    assert metric(metrics, "rlhf_policy_responses_total", model=d, served="reference") == 3
    assert metric(metrics, "rlhf_policy_responses_total", model=policy_store.reference, served="policy") == 1
    assert metric(metrics, "rlhf_policy_requests_total", endpoint="generate", code="200") == 2
    assert metric(metrics, "rlhf_policy_response_kl_count", model=d) == 3


def test_bad_input_is_a_4xx_and_counted(server):
    with server.client() as c:
        assert c.post("/v1/generate", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"}
                      ).status_code == 401
        cases = [(b"{not json", 400, None), (b'{"prompt": 3}', 422, "prompt"), (b'{"prompt": "   "}', 422, "prompt"),
                 (b'{"text": "hi"}', 422, "prompt"),
                 (b'{"items": [' + b",".join([b'{"prompt": "a"}'] * 5) + b"]}", 422, "items"),
                 (b'{"items": [{"prompt": "a"}, {"prompt": ""}]}', 422, "items[1].prompt")]
        for body, code, field in cases:
            r = c.post("/v1/generate", content=body, headers={"content-type": "application/json"})
            assert r.status_code == code, (body, r.text)
            assert r.json()["field"] == field
        big = c.post("/v1/generate", json={"prompt": "x" * 5000})
        assert big.status_code == 413
        metrics = c.get("/metrics").text
    assert metric(metrics, "rlhf_policy_requests_total", code="422") == 5
    assert metric(metrics, "rlhf_policy_requests_total", code="413") == 1
    import httpx

    assert httpx.get(server.url + "/metrics").status_code == 401          # /metrics needs the token
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_filters_and_classifier_refuse_in_refuse_mode(policy_store):
    """Any non-blank text trips the regex, and a real reward-model service scores every response under the
    classifier's minimum: the reference-identical policy (KL 0) is refused on the filters alone."""
    rm_store = ServeStore(policy_store.root, [policy_store.rm], policy_store.calibration)
    rm = start_server(rm_store)  # follows the same registry: serves the releases' reward model
    try:
        s = start_policy_server(policy_store.root, "--on-guard", "refuse", "--kl-limit", "1000",
                                "--refusal-text", "No.", "--filter-regexes", r"\S", "--classifier-url", rm.url,
                                "--classifier-min-score", "1000000")
        try:
            with s.client() as c:
                r = c.post("/v1/generate", json={"prompt": PROMPTS[1], "key": _key(canary=True)})
                assert r.status_code == 200, r.text
                item = r.json()
                metrics = c.get("/metrics").text
            assert item["kl"] == 0.0 and item["served"] == "refused" and item["response"] == "No."
            rules = [reason.split(":")[0] for reason in item["reasons"]]
            assert "regex" in rules and "classifier" in rules and "kl" not in rules
            assert any(re.match(r"classifier: score -?\d+\.\d+ < 1000000", x) for x in item["reasons"])
            ref = policy_store.reference
            assert metric(metrics, "rlhf_policy_guarded_total", model=ref, rule="classifier") == 1
            assert metric(metrics, "rlhf_policy_responses_total", model=ref, served="refused") == 1
            assert s.terminate() == 0
        finally:
            s.terminate()
    finally:
        rm.terminate()


def test_classifier_fails_closed():
    from rlhf_assets.policy_serving.app import Classifier
    from rlhf_assets.policy_serving.metrics import PolicyMetrics

    metrics = PolicyMetrics()

    async def run():
        classifier = Classifier("http://127.0.0.1:9", None, 0.0, 2.0, metrics)  # nothing listens on port 9
        try:
            return await classifier.check(["p", "q"], ["a", "b"])
        finally:
            await classifier.close()

    out = asyncio.run(run())
    assert len(out) == 2 and all(x and "failing closed" in x[0] for x in out)
    assert "rlhf_policy_classifier_errors_total 1.0" in metrics.render().decode()


def test_follows_the_registry_without_a_restart(server, policy_store):
    """Ending the canary sends its keys to production; a new canary is loaded and takes them back."""
    registry = Registry(Storage(str(policy_store.root)))
    key = _key(canary=True)
    with server.client() as c:
        registry.clear_alias("canary", reason="test", actor="test")
        assert c.post("/admin/reload").json()["canary"] is None
        assert c.get("/readyz").json()["canary"] is None
        moved = c.post("/v1/generate", json={"prompt": PROMPTS[2], "key": key}).json()
        assert moved["alias"] == "production" and moved["policy_id"] == policy_store.drifted
        policy_store.promote(CLEAN, policy_store.reference, alias="canary", share=0.5)
        assert c.post("/admin/reload").json()["canary"]["policy_id"] == policy_store.reference
        back = c.post("/v1/generate", json={"prompt": PROMPTS[2], "key": key}).json()
        assert back["alias"] == "canary" and back["served"] == "policy"


def test_sigterm_exits_0_with_the_behaviour_log_flushed(server, policy_store):
    """The last test on the shared server: stops it. Every served response is in the log, valid for OPE."""
    with server.client() as c:
        r = c.post("/v1/generate", json={"items": [{"prompt": p} for p in PROMPTS[:2]], "key": _key(canary=False)})
        assert r.status_code == 200
    assert server.terminate() == 0
    storage = Storage(str(policy_store.root))
    log = read_policy_log(storage).filter(pl.col("served") != "refused")  # (the refuse-mode server's row)
    assert log.height == 3 + 1 + 2 + 2        # every generated response of this server, none lost
    validate_log(log)                          # the behaviour-log schema off-policy evaluation reads
    drifted = log.filter(pl.col("policy_id") == policy_store.drifted)
    assert drifted.height == 6 and set(drifted["served"]) == {"reference"}
    assert (drifted["kl"] > KL_LIMIT).all() and drifted["guard_reasons"].list.len().min() >= 1
    assert set(log.filter(pl.col("alias") == "canary")["served"]) == {"policy"}
    served = [i["response"] for i in r.json()["items"]]
    assert drifted.tail(2)["served_response"].to_list() == served
    # the logged log-probs are the policy's own, reproduced by teacher forcing; kl is their ratio to the reference
    store = ArtifactStore(storage)
    policy, tok, _ = load_policy(store.get(policy_store.drifted))
    reference, _, _ = load_policy(store.get(policy_store.reference))
    p_ids, r_ids = drifted["prompt_token_ids"].to_list(), drifted["response_token_ids"].to_list()
    lp = teacher_forced_logprobs(policy, p_ids, r_ids, tok.pad_token_id)
    ref = teacher_forced_logprobs(reference, p_ids, r_ids, tok.pad_token_id)
    for row, a, b in zip(drifted.iter_rows(named=True), lp, ref):
        np.testing.assert_allclose(row["behavior_token_logprobs"], a, atol=1e-4)
        assert row["kl"] == pytest.approx(float((a - b).sum()), abs=1e-3)
    # the next release's OPE finds these rows as its behaviour log
    from rlhf_assets.evaluation.release_ope import serving_log

    ope_log = serving_log(storage, policy_store.drifted, include_canary=True)
    assert ope_log is not None and ope_log.height == read_policy_log(storage).height  # production + canary rows
    assert set(ope_log["policy_id"]) == {policy_store.drifted, policy_store.reference}


def test_over_max_in_flight_is_429_and_counted_in_the_policy_metrics():
    """The reward-model service's in-flight limit, wired to the policy metrics: the second concurrent request is
    refused at once while the first is being served."""
    import httpx
    from fastapi.responses import JSONResponse

    from rlhf_assets.policy_serving.metrics import PolicyMetrics
    from rlhf_assets.serving.app import InFlightLimit

    metrics, release = PolicyMetrics(), asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await JSONResponse({"ok": True})(scope, receive, send)

    async def run():
        transport = httpx.ASGITransport(app=InFlightLimit(slow_app, limit=1, metrics=metrics))
        async with httpx.AsyncClient(transport=transport, base_url="http://policy") as client:
            first = asyncio.create_task(client.post("/v1/generate", json={"prompt": "a"}))
            while metrics.in_flight._value.get() < 1:
                await asyncio.sleep(0.01)
            second = await client.post("/v1/generate", json={"prompt": "b"})
            release.set()
            return (await first).status_code, second

    first, second = asyncio.run(run())
    assert first == 200 and second.status_code == 429 and second.headers["retry-after"] == "1"
    text = metrics.render().decode()
    assert "rlhf_policy_overload_rejections_total 1.0" in text
    assert metric(text, "rlhf_policy_requests_total", endpoint="overload", code="429") == 1
