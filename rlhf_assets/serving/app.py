"""The HTTP API of the reward-model service (FastAPI).

    POST /v1/score                       {"prompt", "response"} | {"items": [...]}  → raw scores
    POST /v1/compare                     {"prompt", "response_a", "response_b"} | items → calibrated P(a ≻ b)
    POST /v1/models/{artifact_id}/score|compare                                   → the same, one pinned version
    POST /admin/reload                   read the registry now (and switch if it changed)
    GET  /healthz  /readyz  /metrics

Every /v1, /admin and (by default) /metrics request needs ``Authorization: Bearer <RLHF_SERVE_TOKEN>``; health
probes do not. Bad input is a 4xx with ``{"error", "field"}`` and never reaches a model; more than
``max_in_flight`` requests at once get 429 with ``Retry-After`` immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rlhf_assets.serving.cache import ScoreCache, Scored, text_key
from rlhf_assets.serving.cascade import escalate
from rlhf_assets.serving.log import ServingLog
from rlhf_assets.serving.metrics import ServiceMetrics
from rlhf_assets.serving.pool import ModelPool, Route
from rlhf_assets.serving.requests import COMPARE_FIELDS, SCORE_FIELDS, ApiError, parse
from rlhf_assets.serving.settings import ServeSettings
from rlhf_assets.storage import Storage

PUBLIC_PATHS = ("/healthz", "/readyz")


class InFlightLimit:
    """ASGI middleware: at most ``limit`` API requests at once; the next gets 429 at once, never a wait."""

    def __init__(self, app: Any, limit: int, metrics: ServiceMetrics, service: Service | None = None):
        self.app, self.limit, self.metrics, self.current = app, limit, metrics, 0
        if service is not None:
            service.pool.in_flight = lambda: self.current  # the batchers wait only while more requests are coming

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.current >= self.limit:
            self.metrics.rejected.inc()
            self.metrics.requests.labels(model="none", alias="none", endpoint="overload", code="429").inc()
            response = JSONResponse({"error": f"over capacity ({self.limit} requests in flight); retry shortly",
                                     "field": None}, status_code=429, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        self.current += 1
        self.metrics.in_flight.set(self.current)
        try:
            await self.app(scope, receive, send)
        finally:
            self.current -= 1
            self.metrics.in_flight.set(self.current)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit``: from Content-Length, or while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ServiceBase:
    """What both services (``rlhf serve``, ``rlhf serve-policy``) do the same way: the bearer-token check, following
    the registry (a reload every ``reload_interval_s``; a failed load while nothing is served is the /readyz reason),
    and the start/stop of the log and the pool. A service sets ``settings``, ``storage``, ``token``, ``metrics``,
    ``pool`` and ``log_class`` in its __init__ (then calls ``super().__init__()``)."""

    log_class: type[ServingLog] = ServingLog

    def __init__(self) -> None:
        self.log: ServingLog | None = None
        self._follow: asyncio.Task | None = None

    # lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.log = self.log_class(self.storage, flush_rows=s.log_flush_rows, flush_s=s.log_flush_s,
                                  buffer_rows=s.log_buffer_rows,
                                  on_outcome=lambda outcome, n: self.metrics.log_rows.labels(outcome=outcome).inc(n))
        self._follow = asyncio.create_task(self._follow_registry())

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follow
        await asyncio.to_thread(self.pool.close)
        if self.log is not None:
            await asyncio.to_thread(self.log.close)

    async def reload(self) -> bool:
        try:
            changed = await self.pool.refresh()
        except Exception as exc:  # noqa: BLE001 - a bad registry state must not take the service down
            self.metrics.reloads.labels(result="failed").inc()
            if self.pool.routes.production is None and self.pool.routes.canary is None:
                self.pool.not_ready_reason = f"loading failed: {exc}"
            raise
        if changed:
            self.metrics.reloads.labels(result="applied").inc()
        return changed

    async def _follow_registry(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.reload()
            await asyncio.sleep(self.settings.reload_interval_s)

    # auth ------------------------------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <RLHF_SERVE_TOKEN>)",
                           headers={"WWW-Authenticate": "Bearer"})


class Service(ServiceBase):
    """State of one running reward-model service: the pool of models, the cache, the log, the metrics."""

    def __init__(self, settings: ServeSettings, storage: Storage, token: str | None):
        self.settings, self.storage = settings, storage
        self.token = token.encode() if token else None
        self.metrics = ServiceMetrics()
        self.pool = ModelPool(storage, settings, self.metrics)
        self.cache = ScoreCache(settings.cache_entries, settings.cache_bytes)
        super().__init__()

    # scoring ---------------------------------------------------------------------------------------------------
    async def score_texts(self, route: Route, pairs: list[tuple[str, str]]) -> list[tuple[Scored, bool]]:
        """(result, cache hit) per (prompt, response); misses share forward passes with other requests."""
        model, artifact = route.slot.model, route.artifact_id
        keys = [text_key(p, r) for p, r in pairs]
        found = [self.cache.get(artifact, k) for k in keys]
        misses = [i for i, hit in enumerate(found) if hit is None]
        self.metrics.cache.labels(result="hit").inc(len(pairs) - len(misses))
        if misses:
            self.metrics.cache.labels(result="miss").inc(len(misses))
            seqs = [model.encode(*pairs[i]) for i in misses]
            results = await route.slot.batcher.score(seqs)
            for i, seq, (score, emb, _) in zip(misses, seqs, results):
                found[i] = Scored(score, np.asarray(emb, dtype=np.float32), len(seq.input_ids), seq.prompt_tokens,
                                  seq.truncation)
                self.cache.put(artifact, keys[i], found[i])
        return [(f, i not in misses) for i, f in enumerate(found)]

    def _log(self, rows: list[dict[str, Any]]) -> None:
        if self.log is not None:
            self.log.append(rows)

    async def handle(self, request: Request, endpoint: str, version: str | None = None) -> JSONResponse:
        started = time.perf_counter()
        model_label, alias_label, code = "none", "none", 500
        try:
            self.check_auth(request)
            fields = SCORE_FIELDS if endpoint == "score" else COMPARE_FIELDS
            body = await read_body(request, self.settings.max_body_bytes)
            parsed = parse(body, fields, self.settings.max_client_batch, request.headers.get("x-request-key"))
            route = await self._route(parsed.key, version)
            model_label, alias_label = route.artifact_id, route.alias
            with self.pool.lease(route):
                out = await (self._score(route, parsed, started) if endpoint == "score"
                             else self._compare(route, parsed, started))
            code = 200
            self.metrics.items.labels(model=model_label, alias=alias_label).inc(len(parsed.items))
            return JSONResponse(out)
        except ApiError as err:
            code = err.status
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        finally:
            self.metrics.requests.labels(model=model_label, alias=alias_label, endpoint=endpoint, code=str(code)).inc()
            if code == 200:
                self.metrics.latency.labels(model=model_label, endpoint=endpoint).observe(
                    time.perf_counter() - started)

    async def _route(self, key: str | None, version: str | None) -> Route:
        if version is not None:
            try:
                return await self.pool.pinned_route(version)
            except KeyError:
                raise ApiError(404, f"no reward model {version!r} in the store; loaded: "
                                    f"{', '.join(sorted(self.pool.slots)) or 'none'}", "artifact_id") from None
        try:
            return self.pool.route(key)
        except LookupError as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None

    def _model_fields(self, route: Route) -> dict[str, Any]:
        return {"artifact_id": route.artifact_id, "release": route.release, "alias": route.alias}

    def _rows(self, route: Route | list[Route], request_id: str, key: str | None, endpoint: str, latency_ms: float,
              scored: list[tuple[Scored, bool]], texts: list[tuple[str, str]], sides: list[str | None],
              p_a: list[float | None]) -> list[dict[str, Any]]:
        """Serving-log rows; ``route`` is the one that scored them all, or one per row (the cascade's student rows
        name the student's artifact, so monitors that select the production artifact's rows never mix them in)."""
        routes = route if isinstance(route, list) else [route] * len(scored)
        now = datetime.now(UTC)
        key_hash = hashlib.sha256(key.encode()).hexdigest() if key else None
        keep = self.settings.log_texts
        per_item = 2 if endpoint == "compare" else 1
        return [{
            "time": now, "request_id": request_id, "item": i // per_item, "key_hash": key_hash, "endpoint": endpoint,
            "side": side,
            "artifact_id": r.artifact_id, "release": r.release, "alias": r.alias,
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "response_sha256": hashlib.sha256(response.encode()).hexdigest(),
            "prompt_tokens": result.prompt_tokens, "tokens": result.tokens, "truncated": result.truncated,
            "score": result.score, "p_a": p, "latency_ms": latency_ms, "cache_hit": hit,
            "embedding": result.embedding.tolist(), "prompt": prompt if keep else None,
            "response": response if keep else None,
        } for i, ((result, hit), (prompt, response), side, p, r) in enumerate(zip(scored, texts, sides, p_a, routes))]

    async def _score(self, route: Route, parsed: Any, started: float) -> dict[str, Any]:
        texts = [(i["prompt"], i["response"]) for i in parsed.items]
        scored = await self.score_texts(route, texts)
        request_id = uuid.uuid4().hex
        latency_ms = (time.perf_counter() - started) * 1000
        self._log(self._rows(route, request_id, parsed.key, "score", latency_ms, scored, texts,
                             [None] * len(texts), [None] * len(texts)))
        items = [{"score": s.score, "truncated": s.truncated is not None, "truncated_part": s.truncated,
                  "tokens": s.tokens, "cached": hit, **self._model_fields(route)} for s, hit in scored]
        return {"items": items, "request_id": request_id} if parsed.batched else {**items[0], "request_id": request_id}

    async def _compare_with(self, route: Route, texts: list[tuple[str, str]]
                            ) -> tuple[list[tuple[Scored, bool]], np.ndarray]:
        """(scored texts, calibrated P(a ≻ b) per item) from one model."""
        scored = await self.score_texts(route, texts)
        margins = np.array([x.score - y.score for (x, _), (y, _) in zip(scored[0::2], scored[1::2])])
        return scored, route.slot.model.probability(margins)

    async def _cascade(self, route: Route, student: Route, texts: list[tuple[str, str]]
                       ) -> tuple[list[tuple[Scored, bool]], np.ndarray, list[Route]]:
        """The student decides every item outside the uncertainty band; the teacher (``route``) those inside it
        (rlhf_assets/serving/cascade.py)."""
        scored, p = await self._compare_with(student, texts)
        sent = escalate(p, self.settings.cascade_band)
        deciders = [route if s else student for s in sent]
        if sent.any():
            idx = np.flatnonzero(sent)
            t_scored, t_p = await self._compare_with(route, [texts[2 * i + k] for i in idx for k in (0, 1)])
            p = p.copy()
            p[idx] = t_p
            for j, i in enumerate(idx):
                scored[2 * i], scored[2 * i + 1] = t_scored[2 * j], t_scored[2 * j + 1]
        self.metrics.cascade.labels(decided_by="teacher").inc(int(sent.sum()))
        self.metrics.cascade.labels(decided_by="student").inc(int((~sent).sum()))
        return scored, p, deciders

    async def _compare(self, route: Route, parsed: Any, started: float) -> dict[str, Any]:
        texts = [(i["prompt"], i[side]) for i in parsed.items for side in ("response_a", "response_b")]
        student = self.pool.student_route() if route.alias != "version" else None
        if student is None:
            scored, p = await self._compare_with(route, texts)
            deciders = [route] * len(parsed.items)
        else:
            scored, p, deciders = await self._cascade(route, student, texts)
        a, b = scored[0::2], scored[1::2]
        request_id = uuid.uuid4().hex
        latency_ms = (time.perf_counter() - started) * 1000
        self._log(self._rows([r for r in deciders for _ in (0, 1)], request_id, parsed.key, "compare", latency_ms,
                             scored, texts, ["a", "b"] * len(parsed.items), [float(v) for v in np.repeat(p, 2)]))
        items = [{"p_a": float(pi), "calibrated": r.slot.model.calibrator is not None,
                  "calibration_id": r.slot.model.calibration_id, "score_a": x.score, "score_b": y.score,
                  "truncated": x.truncated is not None or y.truncated is not None, **self._model_fields(r),
                  **({"decided_by": "teacher" if r is route else "student"} if student is not None else {})}
                 for pi, (x, _), (y, _), r in zip(p, a, b, deciders)]
        return {"items": items, "request_id": request_id} if parsed.batched else {**items[0], "request_id": request_id}


def api_app(title: str, service: Any, internal_error: Callable[[Exception], str], **fastapi: Any) -> FastAPI:
    """A FastAPI app around ``service`` (the annotation app's and every model service's): its lifespan (start, then
    stop after uvicorn drained the in-flight requests, so what the service holds is flushed) and the error shape,
    ``{"error", "field"}``: an ApiError's own status, anything else a 500 saying ``internal_error(err)``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, **fastapi)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": internal_error(err), "field": None}, status_code=500)

    return app


def service_app(title: str, service: Any, settings: Any, nothing_to_serve: str,
                share_in_flight: bool = False) -> FastAPI:
    """What every model service of ours answers besides its own routes: api_app's lifespan (the log is flushed at
    stop) and error shape, /admin/reload, /healthz, /readyz, /metrics and the in-flight limit.
    ``share_in_flight``: the pool's batchers read the in-flight count."""
    app = api_app(title, service, lambda err: f"internal error: {type(err).__name__}")

    @app.post("/admin/reload")
    async def reload(request: Request) -> JSONResponse:
        service.check_auth(request)
        try:
            changed = await service.reload()
        except Exception as exc:  # noqa: BLE001
            raise ApiError(503, f"reload failed: {exc}") from None
        return JSONResponse({"changed": changed, **service.pool.describe()})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reason, routes = service.pool.not_ready_reason, service.pool.routes
        if reason is not None or (routes.production is None and routes.canary is None):
            return JSONResponse({"ready": False, "reason": reason or nothing_to_serve}, status_code=503)
        return JSONResponse({"ready": True, **service.pool.describe()})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if settings.metrics_auth:
            service.check_auth(request)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    app.add_middleware(InFlightLimit, limit=settings.max_in_flight, metrics=service.metrics,
                       service=service if share_in_flight else None)
    return app


def create_app(settings: ServeSettings, storage: Storage, token: str | None) -> FastAPI:
    service = Service(settings, storage, token)
    app = service_app("rlhf_assets reward-model service", service, settings, "no model to serve",
                      share_in_flight=True)

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        return await service.handle(request, "score")

    @app.post("/v1/compare")
    async def compare(request: Request) -> JSONResponse:
        return await service.handle(request, "compare")

    @app.post("/v1/models/{artifact_id}/score")
    async def score_version(artifact_id: str, request: Request) -> JSONResponse:
        return await service.handle(request, "score", version=artifact_id)

    @app.post("/v1/models/{artifact_id}/compare")
    async def compare_version(artifact_id: str, request: Request) -> JSONResponse:
        return await service.handle(request, "compare", version=artifact_id)

    return app
