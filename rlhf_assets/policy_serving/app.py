"""The HTTP API of the policy service (FastAPI), with the reward-model service's auth, body limit, in-flight limit
and error shape (serving/app.py, serving/requests.py).

    POST /v1/generate     {"prompt"} | {"items": [{"prompt"}, ...]}, "key"? → the guarded response per prompt
    POST /admin/reload    read the registry now
    GET  /healthz  /readyz  /metrics

Per prompt: the routed policy samples a response; its log-likelihood ratio to the frozen reference (kl) is computed
on the generated tokens; it is **guarded** when kl > the release's KL limit (its own, from its measured KL, or the
``kl_limit`` override: kl_limit.py) or it trips a response filter (blocklist, regexes, the reward-model classifier).
Prompts of concurrent requests share generate calls (the version's micro-batchers, pool.py). A guarded response is replaced by the reference's answer (refused if that trips a
filter too) or refused, per ``on_guard``. Every response is counted (rlhf_policy_responses / rlhf_policy_guarded)
and logged with its evidence and behaviour log-probs (policy_serving/log.py).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rlhf_assets.evaluation.response_filters import ResponseFilter, ResponseFilterSettings
from rlhf_assets.policy_serving.engine import Generated
from rlhf_assets.policy_serving.log import PolicyServingLog
from rlhf_assets.policy_serving.metrics import PolicyMetrics
from rlhf_assets.policy_serving.pool import PolicyPool, PolicyRoute
from rlhf_assets.policy_serving.settings import PolicyServeSettings
from rlhf_assets.serving.app import ServiceBase, read_body, service_app
from rlhf_assets.serving.requests import ApiError, parse
from rlhf_assets.storage import Storage

PROMPT_FIELDS = ("prompt",)


class Classifier:
    """The hook that scores responses with a running reward-model service (``POST /v1/score``); a score under the
    minimum trips it, and so does an error or a timeout (fail closed)."""

    def __init__(self, url: str, token: str | None, min_score: float, timeout_s: float, metrics: PolicyMetrics):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.min_score, self.metrics = min_score, metrics

    async def check(self, prompts: list[str], responses: list[str]) -> list[list[str]]:
        try:
            r = await self.client.post("/v1/score", json={"items": [{"prompt": p, "response": t}
                                                                    for p, t in zip(prompts, responses)]})
            r.raise_for_status()
            scores = [float(i["score"]) for i in r.json()["items"]]
        except Exception as exc:  # noqa: BLE001 - any failure: guarded, never served unchecked
            self.metrics.classifier_errors.inc()
            return [[f"classifier: unavailable ({type(exc).__name__}); failing closed"] for _ in prompts]
        return [[f"classifier: score {s:.3f} < {self.min_score}"] if s < self.min_score else [] for s in scores]

    async def close(self) -> None:
        await self.client.aclose()


class PolicyService(ServiceBase):
    """State of one running policy service: the pool of policies, the filters, the log, the metrics (the
    reward-model service's auth, registry following and lifecycle: serving/app.py's ServiceBase)."""

    log_class = PolicyServingLog

    def __init__(self, settings: PolicyServeSettings, filters: ResponseFilterSettings, storage: Storage,
                 token: str | None):
        self.settings, self.storage = settings, storage
        self.token = token.encode() if token else None
        self.metrics = PolicyMetrics()
        self.pool = PolicyPool(storage, settings, self.metrics)
        self.filter = ResponseFilter(filters)
        self.classifier = (Classifier(settings.classifier_url, token, settings.classifier_min_score,
                                      settings.classifier_timeout_s, self.metrics)
                           if settings.classifier_url else None)
        super().__init__()

    async def start(self) -> None:
        import torch

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self.classifier is not None:
            await self.classifier.close()

    # guarding --------------------------------------------------------------------------------------------------
    async def _filter_reasons(self, prompts: list[str], texts: list[str]) -> list[list[str]]:
        reasons = [[f"{h.rule}: {h.pattern!r} matched {h.match[:80]!r}" for h in self.filter.hits(t)] for t in texts]
        if self.classifier is not None and texts:
            for mine, theirs in zip(reasons, await self.classifier.check(prompts, texts)):
                mine.extend(theirs)
        return reasons

    async def generate(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        model_label, alias_label, code = "none", "none", 500
        try:
            self.check_auth(request)
            body = await read_body(request, self.settings.max_body_bytes)
            parsed = parse(body, PROMPT_FIELDS, self.settings.max_client_batch, request.headers.get("x-request-key"))
            for i, item in enumerate(parsed.items):
                where = f"items[{i}].prompt" if parsed.batched else "prompt"
                if not item["prompt"].strip():
                    raise ApiError(422, f"{where} is empty", where)
                if len(item["prompt"]) > self.settings.max_prompt_chars:
                    raise ApiError(422, f"{where} has {len(item['prompt'])} characters; at most "
                                        f"{self.settings.max_prompt_chars}", where)
            try:
                route = self.pool.route(parsed.key)
            except LookupError as exc:
                raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
            model_label, alias_label = route.target.policy_id, route.alias
            with self.pool.lease(route):
                items = await self._serve(route, [i["prompt"] for i in parsed.items], parsed.key, started)
            code = 200
            request_id = items[0]["request_id"]
            out = {"items": items, "request_id": request_id} if parsed.batched else items[0]
            return JSONResponse(out)
        except ApiError as err:
            code = err.status
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        finally:
            self.metrics.requests.labels(model=model_label, alias=alias_label, endpoint="generate",
                                         code=str(code)).inc()
            if code == 200:
                self.metrics.latency.labels(model=model_label).observe(time.perf_counter() - started)

    async def _serve(self, route: PolicyRoute, prompts: list[str], key: str | None,
                     started: float) -> list[dict[str, Any]]:
        s, slot, target = self.settings, route.slot, route.target
        prompt_ids = [slot.model.encode(p) for p in prompts]
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise ApiError(422, f"prompt {i} encodes to no tokens", "prompt")
        generated: list[Generated] = [g for (g,), _ in await slot.generate.submit(list(zip(prompts, prompt_ids)))]
        texts, limit = [g.text for g in generated], slot.kl_limit
        reasons = await self._filter_reasons(prompts, texts)
        for g, why in zip(generated, reasons):
            self.metrics.kl.labels(model=target.policy_id).observe(max(g.kl, 0.0))
            if g.kl > limit.nats:
                why.insert(0, f"kl: {g.kl:.3f} nats > {limit.describe()}")
        guarded = [i for i, why in enumerate(reasons) if why]
        served, kinds = list(texts), ["policy"] * len(texts)
        if guarded and s.on_guard == "reference":
            answers = [a for (a,), _ in await slot.reference.submit([prompt_ids[i] for i in guarded])]
            checks = await self._filter_reasons([prompts[i] for i in guarded], answers)
            for i, answer, bad in zip(guarded, answers, checks):
                served[i], kinds[i] = (answer, "reference") if not bad else (s.refusal_text, "refused")
                if bad:
                    reasons[i].extend(f"reference answer: {b}" for b in bad)
        elif guarded:
            for i in guarded:
                served[i], kinds[i] = s.refusal_text, "refused"
        rewards = [g.reward for g in generated]
        for why, kind in zip(reasons, kinds):
            self.metrics.responses.labels(model=target.policy_id, alias=route.alias, served=kind).inc()
            for rule in dict.fromkeys(r.split(":", 1)[0] for r in why if not r.startswith("reference answer")):
                self.metrics.guarded.labels(model=target.policy_id, alias=route.alias, rule=rule).inc()
        request_id = uuid.uuid4().hex
        latency_ms = (time.perf_counter() - started) * 1000
        self._log(route, request_id, key, latency_ms, prompts, generated, rewards, reasons, served, kinds)
        return [{"response": text, "served": kind, "guarded": bool(why), "reasons": why, "kl": g.kl,
                 "kl_limit": limit.nats,
                 "response_tokens": len(g.response_ids), "policy_id": target.policy_id,
                 "reference_id": target.reference_id, "release": target.release, "alias": route.alias,
                 "request_id": request_id}
                for text, kind, why, g in zip(served, kinds, reasons, generated)]

    def _log(self, route: PolicyRoute, request_id: str, key: str | None, latency_ms: float, prompts: list[str],
             generated: list[Generated], rewards: list[float], reasons: list[list[str]], served: list[str],
             kinds: list[str]) -> None:
        if self.log is None:
            return
        now, t, sampling = datetime.now(UTC), route.target, route.slot.model.sampling
        key_hash = hashlib.sha256(key.encode()).hexdigest() if key else None
        self.log.append([{
            "prompt": p, "prompt_token_ids": g.prompt_ids, "response": g.text, "response_token_ids": g.response_ids,
            "behavior_token_logprobs": g.logprobs.tolist(), "behavior_logprob": float(g.logprobs.sum()),
            "reward": r, "human_label": None, "policy_id": t.policy_id, "temperature": sampling.temperature,
            "max_new_tokens": sampling.max_new_tokens,
            "time": now, "request_id": request_id, "item": i, "key_hash": key_hash, "release": t.release,
            "alias": route.alias, "reference_id": t.reference_id, "kl": g.kl, "served": kind, "guard_reasons": why,
            "served_response": text, "latency_ms": latency_ms,
        } for i, (p, g, r, why, text, kind) in enumerate(zip(prompts, generated, rewards, reasons, served, kinds))])


def create_app(settings: PolicyServeSettings, filters: ResponseFilterSettings, storage: Storage,
               token: str | None) -> FastAPI:
    service = PolicyService(settings, filters, storage, token)
    app = service_app("rlhf_assets policy service", service, settings, "no policy to serve", share_in_flight=True)

    @app.post("/v1/generate")
    async def generate(request: Request) -> JSONResponse:
        return await service.generate(request)

    return app
