"""Every way a request can fail, and its HTTP answer, in one table.

Handlers raise `RequestError(Problem.X, "message naming the field and the problem")`; the one
function `error_response` turns it into a JSON body `{"error": message}` with the table's status.
"""

from __future__ import annotations

import enum
from typing import Final

import orjson
from aiohttp import web

__all__ = ["STATUS", "Problem", "RequestError", "error_response"]


class Problem(enum.Enum):
    NOT_JSON = "not_json"
    """The body is not JSON, truncated JSON, not UTF-8, or JSON of the wrong shape."""
    TOO_COMPLEX = "too_complex"
    """Too many fields in one object, or nested too deep."""
    INVALID_EVENT = "invalid_event"
    """A single-event endpoint got an event that breaks the contract."""
    TOO_LARGE = "too_large"
    """Body over --max-body, or over Segment's per-call limits."""
    UNSUPPORTED_MEDIA = "unsupported_media"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    TIMEOUT = "timeout"
    """The client took longer than --request-timeout to send its body."""
    FULL = "full"
    """Buffer and spool are full: retry later."""
    UNAVAILABLE = "unavailable"
    """The spool cannot be written."""


STATUS: Final[dict[Problem, int]] = {
    Problem.NOT_JSON: 400,
    Problem.TOO_COMPLEX: 400,
    Problem.INVALID_EVENT: 400,
    Problem.UNAUTHORIZED: 401,
    Problem.FORBIDDEN_ORIGIN: 403,
    Problem.TIMEOUT: 408,
    Problem.TOO_LARGE: 413,
    Problem.UNSUPPORTED_MEDIA: 415,
    Problem.FULL: 503,
    Problem.UNAVAILABLE: 503,
}
RETRY_AFTER_SECONDS: Final = 5


class RequestError(Exception):
    """A request that gets an error answer; `message` names the problem for the client."""

    def __init__(self, problem: Problem, message: str) -> None:
        self.problem = problem
        self.message = message
        super().__init__(message)

    @property
    def status(self) -> int:
        return STATUS[self.problem]


def error_response(error: RequestError, **extra: object) -> web.Response:
    headers: dict[str, str] = {}
    if error.problem is Problem.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Basic realm="shardflow"'
    if error.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response = web.Response(
        status=error.status,
        body=orjson.dumps({"error": error.message, **extra}),
        content_type="application/json",
        headers=headers,
    )
    if error.problem in (Problem.TOO_LARGE, Problem.TIMEOUT):
        response.force_close()
    return response
