"""The HTTP handlers. Each answers once the request's records are in the spool, never later.

Bad input is answered from the one table in `processor.ingest.errors`; a handler never answers
500 for anything a client sends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor import metrics
from processor.ingest import pixel, segment
from processor.ingest.access import Access
from processor.ingest.body import (
    JSON_TYPES,
    NDJSON_TYPES,
    check_structure,
    media_type,
    not_json,
    parse_json,
    read_body,
)
from processor.ingest.config import IngestConfig
from processor.ingest.errors import Problem, RequestError, error_response
from processor.ingest.intake import Batch, Intake
from processor.ingest.openapi import OPENAPI

__all__ = ["Handlers"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SEGMENT_TYPES = JSON_TYPES
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "text/plain", ""})
_SUCCESS = orjson.dumps({"success": True})


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Handlers:
    """Bound handlers over one front end's access rules, intake and readiness."""

    def __init__(
        self, config: IngestConfig, access: Access, intake: Intake, ready: Callable[[], str | None]
    ) -> None:
        self.config = config
        self.access = access
        self.intake = intake
        self.ready = ready

    def routes(self) -> list[web.RouteDef]:
        posts: list[tuple[str, Handler]] = [("/v1/events", self.events), ("/v1/batch", self.segment_batch)]
        posts += [(f"/v1/{kind}", self._segment_call(kind)) for kind in sorted(segment.SEGMENT_TYPES)]
        return [
            *(web.post(path, self._guard(handler)) for path, handler in posts),
            web.get("/i", self.pixel, allow_head=False),
            web.post("/i", self.pixel),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
            web.options("/{tail:.*}", self._guard(self.preflight, time_it=False)),
        ]

    def _guard(self, handler: Handler, *, time_it: bool = True) -> Handler:
        """Time the request, answer RequestError from the table, add CORS headers."""
        access = self.access

        async def guarded(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except RequestError as exc:
                extra = (
                    {"success": False}
                    if request.path.startswith("/v1/") and request.path != "/v1/events"
                    else {}
                )
                response = error_response(exc, **extra)
            for name, value in access.cors_headers(request):
                response.headers[name] = value
            if time_it:
                metrics.INGEST_REQUEST_SECONDS.observe(time.perf_counter() - start)
            return response

        return guarded

    # -- POST /v1/events -------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.access.check_key(Access.basic_user(request))
        kind = media_type(request, JSON_TYPES | NDJSON_TYPES)
        body = await read_body(request, self.config.max_body, self.config.request_timeout)
        batch = self.intake.batch(self.access.client_ip(request), request.headers.get("User-Agent"))
        if kind in NDJSON_TYPES:
            if not self.intake.add_lines(batch, [line for line in body.split(b"\n") if line]):
                self._add_ndjson(batch, body)
        elif not self.intake.add_body(batch, body):
            self._add_json(batch, body)
        await self.intake.submit(batch)
        # A JSON body is always 202 with the rejected ones listed (SPEC): they travel on as dead
        # letters; 400 is kept for a body that is not JSON at all.
        return _json(202, {"accepted": batch.accepted, "rejected": batch.rejected})

    def _add_ndjson(self, batch: Batch, body: bytes) -> None:
        """The dict path for NDJSON: each line parsed alone, so one bad line is one dead letter."""
        items: list[Any] = []
        lines: list[bytes] = []
        problems: dict[int, str] = {}
        for line in body.split(b"\n"):
            if not line:
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if line.isspace():
                    continue
                problems[len(items)] = not_json(line, exc, "line").message
                item = None
            items.append(item)
            lines.append(line)
        if not items:
            raise RequestError(Problem.NOT_JSON, "body has no events; send one JSON object per line")
        self.intake.add_all(batch, items, lines, problems, max(map(len, lines)), _check_line)

    def _add_json(self, batch: Batch, body: bytes) -> None:
        """The dict path for a JSON body: one event object or an array of them."""
        value = parse_json(body)
        if isinstance(value, dict):
            self.intake.add(batch, 0, value, body, len(body))
        elif isinstance(value, list):
            self.intake.add_all(batch, value, [None] * len(value), {}, len(body))
        else:
            raise RequestError(
                Problem.NOT_JSON,
                f"body must be a JSON object, an array of objects, or NDJSON, not {_kind(value)}",
            )

    # -- Segment ---------------------------------------------------------------------------------

    def _segment_call(self, kind: str) -> Handler:
        async def call(request: web.Request) -> web.StreamResponse:
            message, body = await self._segment_body(request, segment.CALL_LIMIT)
            batch = self.intake.batch(self.access.client_ip(request), request.headers.get("User-Agent"))
            raw = body
            if "writeKey" in message:  # a write key must not travel on into a dead letter's payload
                raw = orjson.dumps({k: v for k, v in message.items() if k != "writeKey"})
            self._segment_add(batch, 0, message, kind, None, raw)
            await self.intake.submit(batch)
            return web.Response(body=_SUCCESS, content_type="application/json")

        return call

    async def segment_batch(self, request: web.Request) -> web.StreamResponse:
        message, _ = await self._segment_body(request, segment.BATCH_LIMIT)
        items = message.get("batch")
        if not isinstance(items, list):
            raise RequestError(Problem.NOT_JSON, "batch must be an array of Segment messages")
        context = message.get("context")
        batch = self.intake.batch(self.access.client_ip(request), request.headers.get("User-Agent"))
        for index, item in enumerate(items):
            raw = orjson.dumps(item)
            if len(raw) > segment.CALL_LIMIT:
                self.intake.reject(
                    batch, index, f"message is {len(raw)} bytes; Segment's limit is {segment.CALL_LIMIT}", raw
                )
                continue
            self._segment_add(batch, index, item, None, context if isinstance(context, dict) else None, raw)
        await self.intake.submit(batch)
        return web.Response(body=_SUCCESS, content_type="application/json")

    async def _segment_body(self, request: web.Request, limit: int) -> tuple[dict[str, Any], bytes]:
        media_type(request, _SEGMENT_TYPES)
        body = await read_body(request, min(limit, self.config.max_body), self.config.request_timeout)
        message = parse_json(body)
        if not isinstance(message, dict):
            raise RequestError(Problem.NOT_JSON, f"body must be a JSON object, not {_kind(message)}")
        self.access.check_key(Access.basic_user(request), message.get("writeKey"))
        return message, body

    def _segment_add(
        self,
        batch: Batch,
        index: int,
        message: object,
        kind: str | None,
        context: dict[str, Any] | None,
        raw: bytes,
    ) -> None:
        try:
            event = segment.to_event(message, kind, context)
        except segment.SegmentError as exc:
            self.intake.reject(batch, index, str(exc), raw)
            return
        self.intake.add(batch, index, event, raw)

    # -- pixel -----------------------------------------------------------------------------------

    async def pixel(self, request: web.Request) -> web.StreamResponse:
        """Always the GIF; a problem shows in the status and `X-Shardflow-Error`, never the body."""
        status = 200
        problem = None
        try:
            params: dict[str, str] = dict(request.query)
            if request.method == "POST":
                media_type(request, _FORM_TYPES)
                body = await read_body(request, self.config.max_body, self.config.request_timeout)
                params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            self.access.check_key(params.get("k"), Access.basic_user(request))
            batch = self.intake.batch(self.access.client_ip(request), request.headers.get("User-Agent"))
            self.intake.add(batch, 0, pixel.to_event(params, request.headers.get("Referer")))
            await self.intake.submit(batch)
            if batch.rejected:
                problem = str(batch.rejected[0]["error"])
        except RequestError as exc:
            status = exc.status if exc.status in (401, 503) else 200
            problem = exc.message
        headers = dict(pixel.NO_CACHE)
        if problem is not None:
            headers["X-Shardflow-Error"] = "".join(c if " " <= c <= "~" else "?" for c in problem[:512])
        if status == 503:
            headers["Retry-After"] = "5"
        response = web.Response(status=status, body=pixel.GIF, content_type="image/gif", headers=headers)
        for name, value in self.access.cors_headers(request):
            response.headers[name] = value
        return response

    # -- the rest --------------------------------------------------------------------------------

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        return self.access.preflight(request)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        reason = self.ready()
        if reason is None:
            return _json(200, {"status": "ready"})
        return error_response(RequestError(Problem.UNAVAILABLE, reason))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return _json(200, OPENAPI)


def _check_line(line: bytes, item: object) -> None:
    check_structure(line, item, "line")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__
