"""The tracking pixel: `GET /i?url=..&...` answers a 1x1 GIF whatever happens; the query is the event.

Parameters named like event fields (`url`, `referrer`, `title`, `type`, `name`, `user_id`,
`anonymous_id`, `session_id`, `event_id`, `ts`) fill them; `properties`/`context`/`traits` may
carry a JSON object; any other parameter lands in `properties`. `k` is the write key. Without a
`url`, the page that shows the pixel (the `Referer` header) is the url.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final

import orjson

from processor.event import OBJECT_FIELDS, STRING_FIELDS

__all__ = ["GIF", "NO_CACHE", "to_event"]

GIF: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE: Final = {
    "Cache-Control": "no-cache, no-store, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
_FROM_REQUEST: Final = frozenset({"ip", "user_agent", "received_at"})


def to_event(params: Mapping[str, str], referer: str | None) -> dict[str, Any]:
    """The raw event for one pixel hit (validated later like any event)."""
    event: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for name, value in params.items():
        if name == "k" or name in _FROM_REQUEST:
            continue
        if name in STRING_FIELDS:
            event[name] = value
        elif name == "ts":
            event["ts"] = int(value) if value.isdigit() else value
        elif name in OBJECT_FIELDS:
            try:
                event[name] = orjson.loads(value)
            except orjson.JSONDecodeError:
                event[name] = value
        else:
            properties[name] = value
    if properties:
        base = event.get("properties")
        event["properties"] = {**base, **properties} if isinstance(base, dict) else properties
    if "url" not in event and referer:
        event["url"] = referer
    return event
