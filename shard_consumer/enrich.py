"""Enrichment: one stream event becomes one `page_views` row. Runs in the worker pool.

(Stub signature pinned for the consumer; the warehouse issue fills in URL, UTM, referrer,
user-agent and bot enrichment.)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from sinks.base import PageView

__all__ = ["to_page_view"]


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def to_page_view(
    event: Mapping[str, Any], shard_id: str, sequence_number: str, *, anonymize_ip: bool = False
) -> PageView:
    """The row for one decoded event; raises ValueError/TypeError for an event that cannot be a row."""
    received = _time(event["received_at"])
    assert received is not None
    return PageView(
        event_id=event["event_id"],
        type=event.get("type", "page"),
        ts=_time(event.get("ts")),
        received_at=received,
        url=event.get("url"),
        referrer=event.get("referrer"),
        title=event.get("title"),
        user_id=event.get("user_id"),
        anonymous_id=event.get("anonymous_id"),
        session_id=event.get("session_id"),
        user_agent=event.get("user_agent"),
        ip=event.get("ip"),
        name=event.get("name"),
        properties=_json(event.get("properties")),
        context=_json(event.get("context")),
        traits=_json(event.get("traits")),
        host=None,
        path=None,
        utm_source=None,
        utm_medium=None,
        utm_campaign=None,
        referrer_host=None,
        browser=None,
        os=None,
        device=None,
        is_bot=False,
        shard_id=shard_id,
        sequence_number=sequence_number,
    )
