"""Enrichment: one stream event becomes one `page_views` row. Runs in the worker pool.

Adds `host` and `path` of the URL, the UTM fields of its query, `referrer_host`, and from the
user agent the browser and OS family names as ua-parser gives them (`Chrome`, `iOS`), a device
class (desktop, mobile, tablet, bot or other) and `is_bot` (crawlerdetect's maintained list, or
ua-parser's `Spider` device). User agents, URLs, referrers and addresses repeat a lot, so their
analysis is cached per string in bounded LRUs (one set per worker process).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import msgspec
import orjson
import ua_parser
from crawlerdetect import CrawlerDetect

from sinks.base import PageView

__all__ = ["Agent", "anonymize", "parse_agent", "record_to_page_view", "to_page_view"]

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
_new_row = tuple.__new__
"""A NamedTuple from a tuple in its field order, without the keyword-handling constructor."""
_HTTP_URL = re.compile(r"https?://([^/?#@\[\]%]*)(?=[/?#]|\Z)([^?#]*)(?:\?([^#]*))?")
_UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign")
_UTM_FIELD = re.compile(r"(?:^|&)(utm_source|utm_medium|utm_campaign)=([^&]+)")


def _split(url: str) -> tuple[str | None, str, str]:
    """(hostname, path, query) exactly as `urlsplit` gives them; ValueError where it raises.

    Plain `http(s)://` URLs with an ASCII host (nearly all of them) take a regular expression;
    anything urlsplit treats specially (controls, user info, IPv6, zones, odd schemes) takes
    urlsplit itself.
    """
    if url.isascii() and url.isprintable():
        match = _HTTP_URL.match(url)
        if match is not None:
            return match[1].partition(":")[0].lower() or None, match[2], match[3] or ""
    parts = urlsplit(url)
    return parts.hostname or None, parts.path, parts.query


def _query_value(text: str) -> str:
    return unquote(text.replace("+", " ")) if "%" in text or "+" in text else text


def _utm(query: str) -> tuple[str | None, str | None, str | None]:
    """The first non-empty utm_source, utm_medium and utm_campaign, as `parse_qs` reads them."""
    found: dict[str, str] = {}
    if "%" not in query and "+" not in query:
        for name, value in _UTM_FIELD.findall(query):
            found.setdefault(name, value)
        return found.get("utm_source"), found.get("utm_medium"), found.get("utm_campaign")
    for field in query.split("&"):
        name, eq, value = field.partition("=")
        if not eq or not value:
            continue
        name = _query_value(name)
        if name in _UTM_KEYS and name not in found:
            found[name] = _query_value(value)
    return found.get("utm_source"), found.get("utm_medium"), found.get("utm_campaign")


@lru_cache(maxsize=8192)
def _url_parts(url: str) -> _UrlParts:
    """Host, path and UTM fields of `url`.

    Most distinct URLs are a few paths times a few query strings (campaign tags, ids), so a URL
    not seen yet is cut at its `?` and each half analysed through its own cache.
    """
    base, mark, query = url.partition("?")
    if mark and url.isascii() and url.isprintable() and "#" not in base:
        where = _base_parts(base)
        if where is not None:
            return _new_row(_UrlParts, (*where, *_query_utm(query.partition("#")[0])))
    return _whole_url_parts(url)


@lru_cache(maxsize=8192)
def _base_parts(base: str) -> tuple[str | None, str | None] | None:
    """(host, path) of a plain http(s) URL without query or fragment; None for anything else."""
    match = _HTTP_URL.match(base)
    if match is None:
        return None
    host = match[1].partition(":")[0].lower() or None
    return host, match[2] or ("/" if host else None)


@lru_cache(maxsize=1024)
def _query_utm(query: str) -> tuple[str | None, str | None, str | None]:
    return _utm(query) if "utm_" in query else (None, None, None)


def _whole_url_parts(url: str) -> _UrlParts:
    try:
        host, path, query = _split(url)
    except ValueError:
        return _NO_URL
    where = path or ("/" if host else None)
    if "utm_" not in query:
        return _UrlParts(host, where, None, None, None)
    return _UrlParts(host, where, *_utm(query))


@lru_cache(maxsize=8192)
def _host(url: str) -> str | None:
    try:
        return _split(url)[0]
    except ValueError:
        return None


_STREAM_TS = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.([0-9]{3})Z\Z")
_MILLIS = tuple(timedelta(milliseconds=ms) for ms in range(1000))


@lru_cache(maxsize=1024)
def _second(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@lru_cache(maxsize=4096)
def _parse_time(value: str) -> datetime:
    """UTC datetime of an ISO-8601 string; the stream's own `...SS.mmmZ` form via a cache per second."""
    match = _STREAM_TS.match(value)
    if match is not None:
        return _second(match[1]) + _MILLIS[int(match[2])]
    return datetime.fromisoformat(value).astimezone(UTC)


def _time(value: object) -> datetime | None:
    return _parse_time(value) if isinstance(value, str) else None


def to_page_view(
    event: Mapping[str, Any], shard_id: str, sequence_number: str, *, anonymize_ip: bool = False
) -> PageView:
    """The row for one decoded event; raises ValueError/TypeError for an event that cannot be a row."""
    received = _time(event["received_at"])
    if received is None:
        raise TypeError("received_at must be an ISO-8601 string")
    get = event.get
    properties = get("properties")
    context = get("context")
    traits = get("traits")
    return _row(
        event["event_id"],
        get("type", "page"),
        _time(get("ts")),
        received,
        get("url"),
        get("referrer"),
        get("title"),
        get("user_id"),
        get("anonymous_id"),
        get("session_id"),
        get("user_agent"),
        get("ip"),
        get("name"),
        None if properties is None else orjson.dumps(properties).decode(),
        None if context is None else orjson.dumps(context).decode(),
        None if traits is None else orjson.dumps(traits).decode(),
        shard_id,
        sequence_number,
        anonymize_ip,
    )


def _row(
    event_id: Any,
    kind: Any,
    ts: datetime | None,
    received: datetime,
    url: Any,
    referrer: Any,
    title: Any,
    user_id: Any,
    anonymous_id: Any,
    session_id: Any,
    user_agent: Any,
    ip: Any,
    name: Any,
    properties: str | None,
    context: str | None,
    traits: str | None,
    shard_id: str,
    sequence_number: str,
    anonymize_ip: bool,
) -> PageView:
    where = _url_parts(url) if url else _NO_URL
    agent = parse_agent(user_agent) if user_agent else _NO_AGENT
    if anonymize_ip and ip is not None:
        ip = anonymize(ip)
    # positional, in PageView's field order: a third of the cost of the keyword constructor
    return _new_row(
        PageView,
        (
            event_id,
            kind,
            ts,
            received,
            url,
            referrer,
            title,
            user_id,
            anonymous_id,
            session_id,
            user_agent,
            ip,
            name,
            properties,
            context,
            traits,
            *where,
            _host(referrer) if referrer else None,
            *agent,
            shard_id,
            sequence_number,
        ),
    )


_Unset = msgspec.UnsetType
_UNSET = msgspec.UNSET


class _Record(msgspec.Struct, gc=False):
    """The fields of a stream record that its row needs, each typed as the front end writes it.

    Object fields stay JSON text (`msgspec.Raw`): the front end wrote them compactly, and the
    warehouse keeps JSON text, so parsing them into dicts only to encode them again is skipped.
    """

    event_id: str
    received_at: str
    type: str | None = "page"
    ts: str | None = None
    url: str | None = None
    referrer: str | None = None
    title: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    name: str | None = None
    properties: msgspec.Raw | _Unset = _UNSET
    context: msgspec.Raw | _Unset = _UNSET
    traits: msgspec.Raw | _Unset = _UNSET
    dead_letter: msgspec.Raw | _Unset = _UNSET


_decode = msgspec.json.Decoder(_Record).decode


def _json_text(raw: msgspec.Raw | _Unset) -> str | None:
    if raw is _UNSET:
        return None
    text = bytes(raw).decode()
    return None if text == "null" else text


def record_to_page_view(
    data: bytes, shard_id: str, sequence_number: str, *, anonymize_ip: bool = False
) -> PageView | None:
    """The row for one stream record, decoded in C straight into the fields the row needs.

    None for anything this fast path has doubts about (not JSON, a field of another type, a dead
    letter, an event enrichment refuses): the caller then takes the general path
    (`processor.event.decode_record`, then `to_page_view`), which decides and names the problem.
    A record that is plainly an event gives the same row on either path.
    """
    try:
        event = _decode(data)
    except msgspec.MsgspecError:
        return None
    if event.dead_letter is not _UNSET:
        return None
    try:
        return _row(
            event.event_id,
            event.type,
            _time(event.ts),
            _parse_time(event.received_at),
            event.url,
            event.referrer,
            event.title,
            event.user_id,
            event.anonymous_id,
            event.session_id,
            event.user_agent,
            event.ip,
            event.name,
            _json_text(event.properties),
            _json_text(event.context),
            _json_text(event.traits),
            shard_id,
            sequence_number,
            anonymize_ip,
        )
    except Exception:  # third-party parsing: the general path reports it as this record's failure
        return None
