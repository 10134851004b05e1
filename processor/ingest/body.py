"""Reading and parsing request bodies: size, content type, JSON, NDJSON, and structure limits.

Every failure is a `RequestError` with a message naming the problem; nothing here can raise
anything else for any byte sequence a client sends (the hypothesis tests hold it to that).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from aiohttp import web

from processor.ingest.errors import Problem, RequestError

__all__ = [
    "JSON_TYPES",
    "MAX_DEPTH",
    "MAX_FIELDS",
    "NDJSON_TYPES",
    "check_structure",
    "needs_structure_check",
    "not_json",
    "parse_json",
    "parse_ndjson_line",
    "read_body",
]

JSON_TYPES: Final = frozenset({"application/json", "text/plain", "application/x-www-form-urlencoded", ""})
"""text/plain is what `navigator.sendBeacon` sends a string as, x-www-form-urlencoded what `curl -d`
sends; no type at all is taken as JSON. The body is JSON under each of them."""
NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonlines", "application/x-jsonlines"}
)
"""NDJSON is told by its content type only, never guessed from the body."""
MAX_DEPTH: Final = 64
MAX_FIELDS: Final = 1000
"""Fields in any one JSON object of a body (the event's own limits are checked per event)."""


def media_type(request: web.Request, allowed: frozenset[str]) -> str:
    """The request's media type when allowed, else 415 naming what is accepted."""
    kind = request.content_type if "Content-Type" in request.headers else ""
    if kind in allowed or (kind.startswith("application/") and kind.endswith("+json") and "" in allowed):
        return kind
    accepted = ", ".join(sorted(k for k in allowed if k))
    raise RequestError(Problem.UNSUPPORTED_MEDIA, f"content type {kind!r} is not supported; send {accepted}")


async def read_body(request: web.Request, max_body: int, timeout: float) -> bytes:
    """The whole body, or 413 as soon as it passes `max_body` (the rest is never read)."""
    length = request.content_length
    if length is not None and length > max_body:
        raise RequestError(Problem.TOO_LARGE, f"body of {length} bytes is over the {max_body}-byte limit")
    if length is not None and length == 0:
        return b""
    content = request.content
    if content.is_eof():
        # The whole body arrived with the headers (most small requests): no wait, no timer.
        body = content.read_nowait()
        if len(body) > max_body:
            raise RequestError(Problem.TOO_LARGE, f"body is over the {max_body}-byte limit")
        return body
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                total += len(chunk)
                if total > max_body:
                    raise RequestError(Problem.TOO_LARGE, f"body is over the {max_body}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(Problem.TIMEOUT, f"the body took longer than {timeout:g} s to arrive") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def not_json(body: bytes, exc: orjson.JSONDecodeError, what: str = "body") -> RequestError:
    """The 400 for a `body` orjson could not parse, naming the problem."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return RequestError(Problem.NOT_JSON, f"{what} is not valid UTF-8 (byte {bad.start})")
    if "depth limit" in str(exc):
        return RequestError(Problem.TOO_COMPLEX, f"{what} is nested deeper than {MAX_DEPTH} levels")
    if not body.strip():
        return RequestError(Problem.NOT_JSON, f"{what} is empty; send a JSON object or array")
    return RequestError(Problem.NOT_JSON, f"{what} is not valid JSON: {exc.msg} at position {exc.pos}")


def parse_json(body: bytes, what: str = "body") -> Any:
    """The JSON value of `body`, checked against the structure limits."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise not_json(body, exc, what) from None
    check_structure(body, value, what)
    return value


def parse_ndjson_line(line: bytes) -> Any:
    return parse_json(line, "line")


def needs_structure_check(body: bytes) -> bool:
    """False when `body` is too small to break either structure limit (nor can any part of it)."""
    return (len(body) > MAX_FIELDS and body.count(b":") > MAX_FIELDS) or (
        body.count(b"{") + body.count(b"[") > MAX_DEPTH
    )


def check_structure(body: bytes, value: object, what: str = "body") -> None:
    """400 for an object with more than MAX_FIELDS fields or nesting past MAX_DEPTH, walked
    without recursion. Bodies too small to break either limit are not walked at all."""
    if not needs_structure_check(body):
        return
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError(Problem.TOO_COMPLEX, f"{what} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            if len(item) > MAX_FIELDS:
                raise RequestError(
                    Problem.TOO_COMPLEX,
                    f"{what} has an object with {len(item)} fields; the limit is {MAX_FIELDS}",
                )
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
