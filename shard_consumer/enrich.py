"""Enrichment: one stream event becomes one `page_views` row. Runs in the worker pool.

Adds `host` and `path` of the URL, the UTM fields of its query, `referrer_host`, and from the
user agent the browser and OS family names as ua-parser gives them (`Chrome`, `iOS`), a device
class (desktop, mobile, tablet, bot or other) and `is_bot` (crawlerdetect's maintained list, or
ua-parser's `Spider` device). User agents, URLs, referrers and addresses repeat a lot, so their
analysis is cached per string in bounded LRUs (one set per worker process).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson
import ua_parser
from crawlerdetect import CrawlerDetect

from sinks.base import PageView

__all__ = ["Agent", "anonymize", "parse_agent", "to_page_view"]

_DESKTOP_OS = frozenset(
    (
        "Windows",
        "Mac OS X",
        "macOS",
        "Linux",
        "Ubuntu",
        "Fedora",
        "Debian",
        "Chrome OS",
        "ChromeOS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    )
)
_MOBILE_OS = frozenset(("iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Tizen", "HarmonyOS"))
_TABLET_HINTS = ("ipad", "tablet", "kindle", "silk/", "playbook", "sm-t", "tab ")
_detector: CrawlerDetect | None = None


class Agent(NamedTuple):
    """What a user-agent string says: browser and OS family, device class, bot or not."""

    browser: str | None
    os: str | None
    device: str
    is_bot: bool


def _is_crawler(user_agent: str) -> bool:
    global _detector
    if _detector is None:
        _detector = CrawlerDetect()
    return bool(_detector.isCrawler(user_agent))


def _family(value: str | None) -> str | None:
    return None if value in (None, "Other") else value


@lru_cache(maxsize=8192)
def parse_agent(user_agent: str) -> Agent:
    """Browser, OS, device class and bot flag of one user-agent string (cached, bounded)."""
    result = ua_parser.parse(user_agent)
    browser = _family(result.user_agent.family if result.user_agent else None)
    os_family = _family(result.os.family if result.os else None)
    device_family = result.device.family if result.device else ""
    is_bot = device_family == "Spider" or _is_crawler(user_agent)
    lowered = user_agent.lower()
    if is_bot:
        device = "bot"
    elif any(hint in lowered for hint in _TABLET_HINTS) or (
        os_family == "Android" and "mobile" not in lowered
    ):
        device = "tablet"
    elif "mobi" in lowered or os_family in _MOBILE_OS or device_family in ("iPhone", "iPod"):
        device = "mobile"
    elif os_family in _DESKTOP_OS:
        device = "desktop"
    else:
        device = "other"
    return Agent(browser, os_family, device, is_bot)


_NO_AGENT = Agent(None, None, "other", False)
_V4_MASK = (2**32 - 1) ^ 0xFF
_V6_MASK = (2**128 - 1) ^ (2**80 - 1)


@lru_cache(maxsize=8192)
def anonymize(ip: str) -> str | None:
    """IPv4 with its last octet zeroed, IPv6 cut to its /48; None for something not an address."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if address.version == 4:
        return str(ipaddress.IPv4Address(int(address) & _V4_MASK))
    return str(ipaddress.IPv6Address(int(address) & _V6_MASK))


class _UrlParts(NamedTuple):
    host: str | None
    path: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None


_NO_URL = _UrlParts(None, None, None, None, None)


@lru_cache(maxsize=8192)
def _url_parts(url: str) -> _UrlParts:
    try:
        parts = urlsplit(url)
        host = parts.hostname or None
    except ValueError:
        return _NO_URL
    path = parts.path or ("/" if host else None)
    if "utm_" not in parts.query:
        return _UrlParts(host, path, None, None, None)
    query = parse_qs(parts.query)
    return _UrlParts(
        host, path, _first(query, "utm_source"), _first(query, "utm_medium"), _first(query, "utm_campaign")
    )


@lru_cache(maxsize=8192)
def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


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
    if received is None:
        raise TypeError("received_at must be an ISO-8601 string")
    url = event.get("url")
    where = _url_parts(url) if url else _NO_URL
    referrer = event.get("referrer")
    user_agent = event.get("user_agent")
    agent = parse_agent(user_agent) if user_agent else _NO_AGENT
    ip = event.get("ip")
    if anonymize_ip and ip is not None:
        ip = anonymize(ip)
    return PageView(
        event_id=event["event_id"],
        type=event.get("type", "page"),
        ts=_time(event.get("ts")),
        received_at=received,
        url=url,
        referrer=referrer,
        title=event.get("title"),
        user_id=event.get("user_id"),
        anonymous_id=event.get("anonymous_id"),
        session_id=event.get("session_id"),
        user_agent=user_agent,
        ip=ip,
        name=event.get("name"),
        properties=_json(event.get("properties")),
        context=_json(event.get("context")),
        traits=_json(event.get("traits")),
        host=where.host,
        path=where.path,
        utm_source=where.utm_source,
        utm_medium=where.utm_medium,
        utm_campaign=where.utm_campaign,
        referrer_host=_host(referrer) if referrer else None,
        browser=agent.browser,
        os=agent.os,
        device=agent.device,
        is_bot=agent.is_bot,
        shard_id=shard_id,
        sequence_number=sequence_number,
    )
