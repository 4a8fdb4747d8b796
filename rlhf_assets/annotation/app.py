"""The annotation app (FastAPI, server-rendered HTML and a little plain JavaScript; ``rlhf annotate``).

    GET  /                  sign-in page, or the next item of the signed-in annotator's queue for the day
    POST /api/session       {"annotator", "token"} → a session (cookie; also usable as ``Authorization: Bearer``)
    POST /api/signout
    GET  /api/next          the next item as JSON (what the page shows), with progress
    POST /api/answers       {"assignment_id", "label": a|b|tie, "confidence"?: 1..5, "rationale"?, "annotation_ms"?}
    POST /api/skips         {"assignment_id", "reason"}
    GET  /healthz

Items come from the day's work queue (annotation/queue.py); each is shown with its two responses in a left/right
order drawn from its assignment id (a reload shows the same order), and the answer is recorded in that shown
orientation with ``orientation`` saying how it relates to the queue. ``annotation_ms`` is the browser's measure,
bounded by the time since this server served the item (null when this process never served it). Every refusal is
a 4xx with ``{"error", "field"}``; nothing is stored unless the whole answer is accepted (answers.py stores it
before acknowledging it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from rlhf_assets.annotation.answers import AnswerConflict, AnswerStore
from rlhf_assets.annotation.queue import queue_path, read_queue
from rlhf_assets.annotation.roster import Roster, SignInError
from rlhf_assets.annotation.settings import AppSettings
from rlhf_assets.preference.schema import LABELS
from rlhf_assets.serving.app import api_app, read_body
from rlhf_assets.serving.requests import ApiError
from rlhf_assets.storage import Storage

SESSION_COOKIE = "rlhf_annotate_session"
BUNDLED_GUIDELINES = Path(__file__).with_name("guidelines")
TEMPLATES = Path(__file__).with_name("templates")
_SWAP = {"a": "b", "b": "a", "tie": "tie"}
ANSWER_KEYS = {"assignment_id", "label", "confidence", "rationale", "annotation_ms"}
SKIP_KEYS = {"assignment_id", "reason"}


@dataclass(frozen=True)
class Session:
    annotator_id: str
    expires_at: datetime


@dataclass(frozen=True)
class Guidelines:
    version: str
    text: str  # Markdown

    @property
    def html(self) -> str:
        """The text rendered (CommonMark; raw HTML in it is escaped, not passed through)."""
        from markdown_it import MarkdownIt

        return MarkdownIt("commonmark", {"html": False}).render(self.text)


def load_guidelines(folder: str | None, version: str | None) -> Guidelines:
    """The guidelines ``version`` (``v<N>.md``) from ``folder`` (default: the bundled ones); unset: the highest."""
    base = Path(folder) if folder else BUNDLED_GUIDELINES
    found = {p.stem: p for p in base.glob("v*.md") if p.stem[1:].isdigit()}
    if not found:
        raise ValueError(f"no guidelines (v<N>.md) in {base}")
    chosen = version or max(found, key=lambda v: int(v[1:]))
    if chosen not in found:
        raise ValueError(f"guidelines version {chosen!r} not in {base} (there: {', '.join(sorted(found))})")
    return Guidelines(chosen, found[chosen].read_text(encoding="utf-8"))


def is_swapped(assignment_id: str) -> bool:
    """Whether the item is shown with its queued responses swapped: a fair coin drawn from the id, so every load
    of one assignment shows the same order."""
    return hashlib.sha256(f"orientation:{assignment_id}".encode()).digest()[0] & 1 == 1


def shown(assignment: dict[str, Any]) -> dict[str, Any]:
    """The assignment as the annotator sees it: responses, policies and expected answer in the shown order."""
    swapped = is_swapped(assignment["assignment_id"])
    a, b = ("response_b", "response_a") if swapped else ("response_a", "response_b")
    pa, pb = ("policy_b", "policy_a") if swapped else ("policy_a", "policy_b")
    expected = assignment.get("expected_label")
    return {"response_a": assignment[a], "response_b": assignment[b], "policy_a": assignment.get(pa),
            "policy_b": assignment.get(pb), "orientation": "swapped" if swapped else "as_queued",
            "expected_label": _SWAP[expected] if swapped and expected else expected}


class AnnotationService:
    """State of one running app: roster, sessions, the answer store, when each item was served."""

    def __init__(self, settings: AppSettings, storage: Storage):
        self.settings, self.storage = settings, storage
        self.roster = Roster(storage)
        self.guidelines = load_guidelines(settings.guidelines_dir, settings.guidelines_version)
        self.store = AnswerStore(storage)
        self.sessions: dict[str, Session] = {}
        self.served: dict[tuple[str, str], float] = {}  # (annotator, assignment) → monotonic time last served
        self._rotator: asyncio.Task | None = None
        self._queue: tuple[Any, pl.DataFrame] | None = None  # (the day and its queue files' stats, the queue)

    # lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.store.open)
        self._rotator = asyncio.create_task(self._rotate_when_due())

    async def stop(self) -> None:
        if self._rotator is not None:
            self._rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotator
        await asyncio.to_thread(self.store.rotate)  # whatever is waiting lands now

    async def _rotate_when_due(self) -> None:
        interval = min(1.0, self.settings.rotate_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            if self.store.due(self.settings.rotate_answers, self.settings.rotate_seconds):
                with contextlib.suppress(OSError):  # a store outage: the answers stay stored, tried again later
                    await asyncio.to_thread(self.store.rotate)

    # sessions --------------------------------------------------------------------------------------------------
    def sign_in(self, annotator_id: str, token: str) -> tuple[str, Session]:
        entry = self.roster.verify(annotator_id, token)
        expires = min(datetime.now(UTC) + timedelta(hours=self.settings.session_hours),
                      datetime.fromisoformat(entry.expires_at))
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = session = Session(annotator_id, expires)
        return sid, session

    def session(self, request: Request) -> Session:
        sid = request.cookies.get(SESSION_COOKIE)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            sid = given.strip()
        if not sid:
            raise ApiError(401, "not signed in: POST /api/session with your annotator id and token", "session")
        session = self.sessions.get(sid)
        if session is None:
            raise ApiError(401, "unknown or ended session (the app may have restarted): sign in again", "session")
        if datetime.now(UTC) >= session.expires_at:
            self.sessions.pop(sid, None)
            raise ApiError(401, f"session expired at {session.expires_at.isoformat()}: sign in again", "session")
        return session

    # the queue -------------------------------------------------------------------------------------------------
    def day(self) -> str:
        return self.settings.day or datetime.now(UTC).date().isoformat()

    def queue(self) -> pl.DataFrame:
        """The day's queue, read again only when its files changed (one LIST on S3 instead of a GET per file on every
        request: a rematerialized queue is seen at the next request as before)."""
        day = self.day()
        stats = (day, tuple((p.name, size, mtime, etag) for p, size, mtime, etag
                            in self.storage.list_file_stats(queue_path(self.storage, day, "pairs").parent)))
        cached = self._queue
        if cached is None or cached[0] != stats:
            cached = self._queue = (stats, read_queue(self.storage, day))
        return cached[1]

    def assignments(self, annotator_id: str) -> list[dict[str, Any]]:
        """The day's assignments of one annotator, in the order they are served (priority first, then queued)."""
        queue = self.queue().with_row_index("queued")
        mine = queue.filter(pl.col("annotator_id") == annotator_id)
        return mine.sort([pl.col("priority").fill_null(float("-inf")), "queued"], descending=[True, False]) \
            .drop("queued").to_dicts()

    def assignment(self, annotator_id: str, assignment_id: str) -> dict[str, Any]:
        queue = self.queue().filter(pl.col("assignment_id") == assignment_id)
        if queue.height == 0:
            raise ApiError(404, f"no assignment {assignment_id!r} in the queue of {self.day()}", "assignment_id")
        row = queue.row(0, named=True)
        if row["annotator_id"] != annotator_id:
            raise ApiError(403, f"assignment {assignment_id!r} is not assigned to {annotator_id!r}", "assignment_id")
        return row

    def next_item(self, annotator_id: str) -> dict[str, Any]:
        rows = self.assignments(annotator_id)
        states = [self.store.status(r["assignment_id"]) for r in rows]
        progress = {"day": self.day(), "total": len(rows), "answered": states.count("answered"),
                    "skipped": states.count("skipped")}
        progress["position"] = progress["answered"] + progress["skipped"] + (1 if None in states else 0)
        open_rows = [r for r, s in zip(rows, states) if s is None]
        if not open_rows:
            return {"done": True, "progress": progress, "item": None}
        row = open_rows[0]
        self.served[(annotator_id, row["assignment_id"])] = time.monotonic()
        view = shown(row)
        item = {"assignment_id": row["assignment_id"], "prompt": row["prompt"], "response_a": view["response_a"],
                "response_b": view["response_b"], "guidelines_version": self.guidelines.version}
        return {"done": False, "progress": progress, "item": item}

    # answers ---------------------------------------------------------------------------------------------------
    def answer(self, annotator_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        _only(body, ANSWER_KEYS)
        assignment_id = _text(body, "assignment_id", required=True)
        label = body.get("label")
        if label not in LABELS:
            raise ApiError(422, f"label must be one of {', '.join(LABELS)} (a: the left response as shown); got "
                                f"{label!r}", "label")
        confidence = body.get("confidence")
        if confidence is not None and (type(confidence) is not int or not 1 <= confidence <= 5):
            raise ApiError(422, f"confidence must be an integer from 1 to 5, or left out; got {confidence!r}",
                           "confidence")
        rationale = _text(body, "rationale") or None
        if rationale is not None and len(rationale) > self.settings.max_rationale_chars:
            raise ApiError(422, f"rationale is {len(rationale)} characters; at most "
                                f"{self.settings.max_rationale_chars} are kept — shorten it", "rationale")
        browser_ms = body.get("annotation_ms")
        if browser_ms is not None and (type(browser_ms) is not int or browser_ms < 0):
            raise ApiError(422, f"annotation_ms must be a non-negative integer; got {browser_ms!r}", "annotation_ms")
        row = self.assignment(annotator_id, assignment_id)
        served = self.served.get((annotator_id, assignment_id))
        server_ms = int((time.monotonic() - served) * 1000) + 1 if served is not None else None
        annotation_ms = None if server_ms is None or browser_ms is None else min(browser_ms, server_ms)
        view = shown(row)
        record = {
            "comparison_id": assignment_id, "prompt": row["prompt"], "response_a": view["response_a"],
            "response_b": view["response_b"], "label": label, "annotator_id": annotator_id,
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"), "batch_id": row["batch_id"],
            "policy_a": view["policy_a"], "policy_b": view["policy_b"], "temperature": row["temperature"],
            "annotation_ms": annotation_ms, "confidence": confidence, "orientation": view["orientation"],
            "guidelines_version": self.guidelines.version, "rationale": rationale, "item_kind": row["item_kind"],
            "expected_label": view["expected_label"],
        }
        try:
            stored = self.store.store_answer(record)
        except AnswerConflict as exc:
            raise ApiError(409, str(exc), "assignment_id") from None
        self.served.pop((annotator_id, assignment_id), None)
        return stored

    def skip(self, annotator_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        _only(body, SKIP_KEYS)
        assignment_id = _text(body, "assignment_id", required=True)
        reason = (_text(body, "reason") or "").strip()
        if not reason:
            raise ApiError(422, "a skip needs a reason (why the item cannot be judged)", "reason")
        if len(reason) > self.settings.max_skip_reason_chars:
            raise ApiError(422, f"reason is {len(reason)} characters; at most {self.settings.max_skip_reason_chars}",
                           "reason")
        row = self.assignment(annotator_id, assignment_id)
        try:
            return self.store.store_skip(assignment_id, annotator_id, reason, row["day"], row["item_kind"])
        except AnswerConflict as exc:
            raise ApiError(409, str(exc), "assignment_id") from None


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}",
                       unknown[0])


def _text(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(422, f"missing field {name}", name)
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise ApiError(422, f"{name} must be a string without NUL bytes; got {type(value).__name__}", name)
    if required and not value.strip():
        raise ApiError(422, f"{name} is empty", name)
    return value


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; JSON only (a cross-site form cannot send it), at most ``limit`` bytes."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send the body as JSON (Content-Type: application/json)")
    body = await read_body(request, limit)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "the body must be a JSON object")
    return doc


def create_app(settings: AppSettings, storage: Storage) -> FastAPI:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    service = AnnotationService(settings, storage)
    templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))

    # stopped after uvicorn drained the requests: every stored answer lands
    app = api_app("rlhf_assets annotation", service,
                  lambda err: f"internal error: {type(err).__name__}: {err}; nothing was acknowledged",
                  openapi_url=None)

    def page(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(**context),
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    @app.get("/")
    async def index(request: Request) -> HTMLResponse:
        try:
            session = service.session(request)
        except ApiError:
            return page("signin.html")
        state = await asyncio.to_thread(service.next_item, session.annotator_id)
        return page("annotate.html", annotator=session.annotator_id, guidelines=service.guidelines,
                    max_rationale=settings.max_rationale_chars, **state)

    @app.post("/api/session")
    async def sign_in(request: Request) -> JSONResponse:
        body = await json_body(request, settings.max_body_bytes)
        _only(body, {"annotator", "token"})
        annotator, token = _text(body, "annotator", required=True), _text(body, "token", required=True)
        try:
            sid, session = await asyncio.to_thread(service.sign_in, annotator.strip(), token.strip())
        except SignInError as exc:
            raise ApiError(exc.status, exc.message, exc.field) from None
        response = JSONResponse({"annotator_id": session.annotator_id, "session": sid,
                                 "expires_at": session.expires_at.isoformat()})
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict",
                            max_age=int((session.expires_at - datetime.now(UTC)).total_seconds()))
        return response

    @app.post("/api/signout")
    async def sign_out(request: Request) -> JSONResponse:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            service.sessions.pop(sid, None)
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/api/next")
    async def next_item(request: Request) -> JSONResponse:
        session = service.session(request)
        return JSONResponse(await asyncio.to_thread(service.next_item, session.annotator_id))

    @app.post("/api/answers")
    async def answer(request: Request) -> JSONResponse:
        session = service.session(request)
        body = await json_body(request, settings.max_body_bytes)
        ack, _ = await asyncio.to_thread(service.answer, session.annotator_id, body)
        return JSONResponse(ack)

    @app.post("/api/skips")
    async def skip(request: Request) -> JSONResponse:
        session = service.session(request)
        body = await json_body(request, settings.max_body_bytes)
        ack, _ = await asyncio.to_thread(service.skip, session.annotator_id, body)
        return JSONResponse(ack)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "day": service.day(), "guidelines_version": service.guidelines.version,
                "answers_waiting": service.store.waiting()}

    return app
