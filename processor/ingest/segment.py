"""Segment's HTTP Tracking API mapped onto shardflow events.

A Segment message (`page`, `track`, `identify`, `screen`, `group`, `alias`) becomes one event:
`messageId` ⇒ `event_id`, `timestamp` (else `originalTimestamp`) ⇒ `ts`, `userId`/`anonymousId`
⇒ `user_id`/`anonymous_id`, `event` (track) or `name` (page, screen) ⇒ `name`, `properties`,
`traits`, `context`; page fields come from `properties` (as analytics.js sends them) and else
from `context.page`; `context.userAgent` and `context.ip` win over the request's. Fields Segment
uses for its own routing (`integrations`, `sentAt`, `channel`, `_metadata`, ...) are ignored.
A batch's top-level `context` is merged under each message's own.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["BATCH_LIMIT", "CALL_LIMIT", "SEGMENT_TYPES", "to_event"]

SEGMENT_TYPES: Final = frozenset({"page", "track", "identify", "screen", "group", "alias"})
CALL_LIMIT: Final = 32 * 1024
"""Segment's limit on one message (and on a single call's body)."""
BATCH_LIMIT: Final = 500 * 1024

_PAGE_FIELDS: Final = (("url", "url"), ("referrer", "referrer"), ("title", "title"))


class SegmentError(ValueError):
    """A message Segment itself would refuse (no type, no user, not an object)."""


def _object(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def to_event(
    message: object, kind: str | None = None, batch_context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The raw shardflow event for one Segment message (validated later like any event)."""
    if not isinstance(message, dict):
        raise SegmentError("a Segment message must be a JSON object")
    kind = kind or message.get("type")
    if not isinstance(kind, str) or kind not in SEGMENT_TYPES:
        raise SegmentError(f"type must be one of {', '.join(sorted(SEGMENT_TYPES))}, not {kind!r}")
    if message.get("userId") is None and message.get("anonymousId") is None:
        raise SegmentError("userId or anonymousId is required")
    event: dict[str, Any] = {"type": kind}
    for theirs, ours in (
        ("messageId", "event_id"),
        ("userId", "user_id"),
        ("anonymousId", "anonymous_id"),
    ):
        if message.get(theirs) is not None:
            event[ours] = message[theirs]
    ts = message.get("timestamp")
    if ts is None:
        ts = message.get("originalTimestamp")
    if ts is not None:
        event["ts"] = ts
    context = _object(message.get("context"))
    if batch_context:
        context = {**batch_context, **(context or {})}
    if context is not None:
        event["context"] = context
    elif message.get("context") is not None:
        event["context"] = message["context"]
    properties = message.get("properties")
    if properties is not None:
        event["properties"] = properties
    if kind == "track" and message.get("event") is not None:
        event["name"] = message["event"]
    elif kind in ("page", "screen") and message.get("name") is not None:
        event["name"] = message["name"]
    if kind in ("identify", "group") and message.get("traits") is not None:
        event["traits"] = message["traits"]
    extra: dict[str, Any] = {}
    if kind == "group" and message.get("groupId") is not None:
        extra["group_id"] = message["groupId"]
    if kind == "alias" and message.get("previousId") is not None:
        extra["previous_id"] = message["previousId"]
    if extra:
        event["properties"] = {**(_object(properties) or {}), **extra}
    page = _object((context or {}).get("page")) or {}
    props = _object(properties) or {}
    for theirs, ours in _PAGE_FIELDS:
        value = props.get(theirs) if kind == "page" else None
        if value is None:
            value = page.get(theirs)
        if value is not None:
            event[ours] = value
    if context is not None:
        if context.get("userAgent") is not None:
            event["user_agent"] = context["userAgent"]
        if context.get("ip") is not None:
            event["ip"] = context["ip"]
    return event
