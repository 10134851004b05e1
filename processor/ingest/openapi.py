"""The OpenAPI 3.1 description of the front end, served at /openapi.json."""

from __future__ import annotations

from typing import Any, Final

from processor.event import EVENT_TYPES, STRING_FIELDS
from processor.ingest.body import JSON_TYPES, NDJSON_TYPES

__all__ = ["OPENAPI"]

_ERROR = {
    "description": "The problem, named",
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }
    },
}
_ERRORS = {
    "400": _ERROR | {"description": "Body not JSON, truncated, not UTF-8, a scalar, or too complex"},
    "401": _ERROR | {"description": "Missing or unknown write key"},
    "408": _ERROR | {"description": "The body did not arrive within the request timeout"},
    "413": _ERROR | {"description": "Body over the size limit"},
    "415": _ERROR | {"description": "Unsupported content type"},
    "503": _ERROR | {"description": "Buffer and spool full; see Retry-After"},
}
_EVENT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{name: {"type": "string"} for name in STRING_FIELDS if name != "type"},
        "type": {"enum": sorted(EVENT_TYPES), "default": "page"},
        "ts": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]},
        "properties": {"type": "object"},
        "context": {"type": "object"},
        "traits": {"type": "object"},
    },
}
_EVENTS_BODY = {
    "oneOf": [
        {"$ref": "#/components/schemas/Event"},
        {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
    ]
}
_JSON_TYPES = sorted(kind for kind in JSON_TYPES if kind)
_NDJSON_TYPES = sorted(NDJSON_TYPES)
_SEGMENT_OK = {
    "200": {
        "description": "Taken (messages Segment would take are stored; others become dead letters)",
        "content": {"application/json": {"schema": {"example": {"success": True}}}},
    },
    **_ERRORS,
}
_BASIC: list[dict[str, list[str]]] = [{"writeKey": []}, {}]


def _segment(kind: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"Segment-compatible {kind} call (32 KB limit)",
            "security": _BASIC,
            "requestBody": {"content": {key: {"schema": {"type": "object"}} for key in _JSON_TYPES}},
            "responses": _SEGMENT_OK,
        }
    }


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "shardflow ingest", "version": "1"},
    "components": {
        "securitySchemes": {"writeKey": {"type": "http", "scheme": "basic"}},
        "schemas": {"Event": _EVENT},
    },
    "paths": {
        "/v1/events": {
            "post": {
                "summary": "Events as one object, an array, or NDJSON",
                "security": _BASIC,
                "requestBody": {
                    "description": "JSON under application/json, text/plain (sendBeacon), "
                    "application/x-www-form-urlencoded (curl -d) or no content type; NDJSON only "
                    "under an NDJSON content type. Any other type is answered 415.",
                    "content": {
                        **{key: {"schema": _EVENTS_BODY} for key in _JSON_TYPES},
                        **{key: {"schema": {"type": "string"}} for key in _NDJSON_TYPES},
                    },
                },
                "responses": {
                    "202": {
                        "description": "Stored; rejected events are listed and dead-lettered",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "accepted": {"type": "integer"},
                                        "rejected": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "index": {"type": "integer"},
                                                    "error": {"type": "string"},
                                                },
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        **{
            f"/v1/{kind}": _segment(kind)
            for kind in ("page", "track", "identify", "screen", "group", "alias")
        },
        "/v1/batch": _segment("batch") | {},
        "/i": {
            "get": {
                "summary": "Tracking pixel: the query string is the event, `k` the write key",
                "responses": {
                    "200": {"description": "A 1x1 GIF, never cached", "content": {"image/gif": {}}}
                },
            }
        },
        "/healthz": {
            "get": {"summary": "200 while the process runs", "responses": {"200": {"description": "ok"}}}
        },
        "/readyz": {
            "get": {
                "summary": "200 when the stream answers and the spool has room",
                "responses": {"200": {"description": "ready"}, "503": _ERROR},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
}
