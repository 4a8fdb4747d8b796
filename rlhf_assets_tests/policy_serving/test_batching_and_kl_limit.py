"""The policy service's micro-batching and each release's own KL limit, in-process through the real app (ASGI):
prompts of concurrent requests share one generate call (counted in the batch-size histogram, made deterministic by
holding the model busy while they queue — no timing), and a release is guarded at its own limit, derived from the
KL its ppo_policy check measured (kl_limit.py), unless the global kl_limit overrides it."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from rlhf_assets.evaluation.response_filters import ResponseFilterSettings
from rlhf_assets.policy_serving.app import create_app
from rlhf_assets.policy_serving.kl_limit import release_kl_limit
from rlhf_assets.policy_serving.settings import PolicyServeSettings
from rlhf_assets.references import PolicyRef, write_reference
from rlhf_assets.storage import Storage
from rlhf_assets_tests.policy_serving.policy_support import DRIFTED, make_policy_store
from rlhf_assets_tests.support import metric

PROMPTS = ["How do I bake bread?", "Tell me about the moon.", "What is a good name for a cat?"]

MEASURED = {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4}  # the release's kl_within_budget measurement (nats)


def _policy_ref(policy_id: str, measured: dict | None) -> PolicyRef:
    return PolicyRef(artifact_id=policy_id, kind="ppo_policy", dataset_id="d" * 64, kl_budget=12.0,
                     measured_kl=measured)


@pytest.fixture(scope="module")
def drifted_release(tmp_path_factory):
    store = make_policy_store(tmp_path_factory.mktemp("policy-batching"))
    store.promote(DRIFTED, store.drifted)
    write_reference(Storage(str(store.root)), "ppo_policy", DRIFTED, _policy_ref(store.drifted, MEASURED))
    return store


async def _until(condition, what: str) -> None:
    for _ in range(3000):  # a bound on polls, not a timing assertion
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_concurrent_requests_share_one_generate_call_guarded_at_the_release_limit(drifted_release):
    store = drifted_release
    settings = PolicyServeSettings(insecure_no_auth=True, max_wait_ms=0, max_batch_size=8)
    app = create_app(settings, ResponseFilterSettings(), Storage(str(store.root)), None)
    service = app.state.service

    async def run():
        await service.start()
        try:
            await service.reload()
            slot = next(iter(service.pool.slots.values()))
            batcher, started, run = slot.generate, threading.Event(), slot.generate._run

            def run_and_say(items):  # the worker has cut its batch and calls the model
                started.set()
                return run(items)

            batcher._run = run_and_say
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://policy",
                                         timeout=120) as client:
                def post(prompt: str):
                    return asyncio.create_task(client.post("/v1/generate", json={"prompt": prompt}))

                slot.model.lock.acquire()  # the model is busy: what arrives now waits in the batcher's queue
                try:
                    first = post(PROMPTS[0])
                    await _until(started.is_set, "the first prompt's call started (blocked on the busy model)")
                    rest = [post(p) for p in (*PROMPTS, "A fourth question?")]
                    await _until(lambda: batcher._queue.qsize() == 4, "four prompts queued behind it")
                finally:
                    slot.model.lock.release()
                responses = [await first] + [await r for r in rest]
                metrics = (await client.get("/metrics")).text
                ready = (await client.get("/readyz")).json()
        finally:
            await service.stop()
        return responses, metrics, ready

    responses, metrics, ready = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    d = store.drifted
    # one call for the first prompt, ONE for the four that arrived while it ran
    assert metric(metrics, "rlhf_policy_batch_size_count", model=d) == 2
    assert metric(metrics, "rlhf_policy_batch_size_sum", model=d) == 5
    assert metric(metrics, "rlhf_policy_batch_size_bucket", model=d, le="1.0") == 1
    assert len({r.json()["request_id"] for r in responses}) == 5  # each request got its own answer
    limit = 3.0 * MEASURED["ci_high"]  # kl_limit_factor × the upper end of the release's measured KL
    for r in responses:
        item = r.json()
        assert item["kl_limit"] == pytest.approx(limit)
        assert item["kl"] > limit and item["guarded"] and item["served"] == "reference"
        assert "the release's" in item["reasons"][0]
    assert ready["production"]["kl_limit"] == pytest.approx(limit)
    assert ready["production"]["kl_limit_source"] == "release"
    assert metric(metrics, "rlhf_policy_kl_limit", model=d, source="release") == pytest.approx(limit)


def test_release_kl_limit_is_the_releases_own_clamped_and_the_global_setting_overrides(tmp_path):
    storage = Storage(str(tmp_path))
    default = PolicyServeSettings()
    assert default.kl_limit is None  # each release its own, by default
    policy, other = "p" * 64, "q" * 64

    def limit(release, measured=MEASURED, ref_policy=policy, **settings):
        if measured is not None:
            write_reference(storage, "ppo_policy", release, _policy_ref(ref_policy, measured))
        return release_kl_limit(storage, release, policy, PolicyServeSettings(**settings))

    own = limit("r1")
    assert (own.source, own.nats, own.measured) == ("release", pytest.approx(1.2), 0.4)
    assert limit("r2", {"value": 2.0}).nats == pytest.approx(6.0)                    # no interval: the value
    assert limit("r3", {"value": 0.01, "ci_high": 0.02}).nats == default.kl_limit_floor  # floored
    capped = limit("r4", {"value": 50.0, "ci_high": 60.0})
    assert capped.nats == default.kl_limit_max and capped.source == "release"
    assert limit("r5", kl_limit_factor=5.0).nats == pytest.approx(2.0)
    # no evidence: no reference, another policy's reference, a reference without a measurement
    for none in (limit("r6", measured=None), limit("r7", ref_policy=other), limit("r8", measured={}),
                 release_kl_limit(storage, None, policy, default)):
        assert none.source == "no evidence" and none.nats == default.kl_limit_max
    override = limit("r1", kl_limit=2.5)
    assert override.source == "override" and override.nats == 2.5
    with pytest.raises(ValueError):
        PolicyServeSettings(kl_limit_factor=0)
