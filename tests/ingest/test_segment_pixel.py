"""Segment's Tracking API and the pixel, as their senders use them, over real HTTP."""

from __future__ import annotations

import base64
import time
from typing import Any

import aiohttp
import orjson

from processor.event import format_ts
from processor.ingest.pixel import GIF
from processor.ingest.server import FrontEnd
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import FrontFactory, dead_letters_on_stream, events_on_stream, url
from tests.support.wait import eventually

NOW_MS = int(time.time() * 1000)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def when(stream: EmbeddedStream, n: int) -> list[dict[str, Any]] | None:
    events = await events_on_stream(stream)
    return events if len(events) >= n else None


async def test_segment_calls_map_onto_events(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    page = {
        "anonymousId": "anon-1",
        "userId": None,
        "messageId": "m-page",
        "timestamp": "2026-11-28T12:00:00.000Z",
        "name": "Home",
        "properties": {"title": "Welcome", "url": "https://shop.example/?utm_source=x"},
        "context": {
            "page": {"referrer": "https://search.example/"},
            "userAgent": "UA/1",
            "ip": "203.0.113.9",
        },
        "integrations": {"All": True},
        "sentAt": "2026-11-28T12:00:01.000Z",
    }
    track = {"userId": "u-1", "messageId": "m-track", "event": "Bought", "properties": {"price": 3}}
    identify = {"userId": "u-1", "messageId": "m-id", "traits": {"email": "a@b.example"}}
    for path, body in (("/v1/page", page), ("/v1/track", track), ("/v1/identify", identify)):
        async with client.post(url(front, path), json=body) as r:
            assert (r.status, await r.json()) == (200, {"success": True})
    by_id = {e["event_id"]: e for e in await eventually(lambda: when(stream, 3), timeout=10, what="3")}
    p = by_id["m-page"]
    assert {
        k: p[k]
        for k in ("type", "anonymous_id", "name", "url", "title", "referrer", "user_agent", "ip", "ts")
    } == {
        "type": "page",
        "anonymous_id": "anon-1",
        "name": "Home",
        "url": "https://shop.example/?utm_source=x",
        "title": "Welcome",
        "referrer": "https://search.example/",
        "user_agent": "UA/1",
        "ip": "203.0.113.9",
        "ts": "2026-11-28T12:00:00.000Z",
    }
    assert "user_id" not in p
    assert (by_id["m-track"]["type"], by_id["m-track"]["name"], by_id["m-track"]["properties"]) == (
        "track",
        "Bought",
        {"price": 3},
    )
    assert by_id["m-id"]["traits"] == {"email": "a@b.example"}


async def test_segment_batch_merges_context_and_rejects_oversized_messages(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    body = {
        "batch": [
            {"type": "track", "userId": "u", "messageId": "b1", "event": "A", "context": {"locale": "fr"}},
            {"type": "screen", "anonymousId": "x", "messageId": "b2", "name": "Settings"},
            {"type": "track", "userId": "u", "messageId": "b3", "properties": {"blob": "x" * 33_000}},
            {"type": "nope", "userId": "u"},
        ],
        "context": {"library": {"name": "analytics-python"}, "locale": "en"},
    }
    async with client.post(url(front, "/v1/batch"), json=body) as r:
        assert (r.status, await r.json()) == (200, {"success": True})
    events = {e["event_id"]: e for e in await eventually(lambda: when(stream, 2), timeout=10, what="2")}
    assert events["b1"]["context"] == {"library": {"name": "analytics-python"}, "locale": "fr"}
    assert events["b2"]["context"] == {"library": {"name": "analytics-python"}, "locale": "en"}
    assert events["b2"]["name"] == "Settings"
    letters = await eventually(lambda: _two(dead_letters_on_stream(stream)), timeout=10, what="2 letters")
    reasons = sorted(d.reason for d in letters)
    assert reasons[0].startswith("message is 330")
    assert reasons[0].endswith("bytes; Segment's limit is 32768")
    assert reasons[1] == "type must be one of alias, group, identify, page, screen, track, not 'nope'"


async def _two(coro: Any) -> Any:
    got = await coro
    return got if len(got) >= 2 else None


async def test_segment_size_limits_and_json_errors(front: FrontEnd, client: aiohttp.ClientSession) -> None:
    big = {"userId": "u", "event": "x", "properties": {"blob": "x" * 33_000}}
    async with client.post(url(front, "/v1/track"), json=big) as r:
        assert r.status == 413
        assert await r.json() == {
            "error": "body of 33057 bytes is over the 32768-byte limit",
            "success": False,
        }
    async with client.post(
        url(front, "/v1/track"), data=b"{nope", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        body = await r.json()
        assert body["success"] is False
        assert body["error"].startswith("body is not valid JSON")


async def test_write_keys(
    make_front: FrontFactory, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    async with make_front(write_keys=("key-a", "key-b")) as front:
        async with client.post(url(front, "/v1/events"), json={"event_id": "k0"}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Basic realm="shardflow"'
            assert await r.json() == {
                "error": "missing write key: send it as the Basic-auth user name"
                " (or writeKey in a Segment body)"
            }
        async with client.post(
            url(front, "/v1/events"), json={"event_id": "k0"}, headers=basic("wrong")
        ) as r:
            assert (r.status, await r.json()) == (401, {"error": "unknown write key"})
        async with client.post(
            url(front, "/v1/events"), json={"event_id": "k1"}, headers=basic("key-b")
        ) as r:
            assert r.status == 202
        body = {"writeKey": "key-a", "userId": "u", "event": "E", "messageId": "k2"}
        async with client.post(url(front, "/v1/track"), json=body) as r:
            assert (r.status, await r.json()) == (200, {"success": True})
        body["writeKey"] = "nope"
        async with client.post(url(front, "/v1/track"), json=body) as r:
            assert (r.status, await r.json()) == (401, {"error": "unknown write key", "success": False})
        async with client.get(
            url(front, "/i"), params={"k": "key-a", "event_id": "k3", "url": "https://x/"}
        ) as r:
            assert (r.status, await r.read()) == (200, GIF)
        async with client.get(url(front, "/i"), params={"k": "bad", "event_id": "k4"}) as r:
            assert (r.status, await r.read()) == (401, GIF)
            assert r.headers["X-Shardflow-Error"] == "unknown write key"
    ids = sorted(e["event_id"] for e in await eventually(lambda: when(stream, 3), timeout=10, what="3"))
    assert ids == ["k1", "k2", "k3"]


async def test_pixel_is_always_a_gif_never_cached(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    params = {
        "event_id": "px1",
        "url": "https://a.example/p",
        "title": "T",
        "ts": str(NOW_MS),
        "campaign": "c1",
    }
    async with client.get(url(front, "/i"), params=params, headers={"User-Agent": "UA/2"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "image/gif"
        assert r.headers["Cache-Control"] == "no-cache, no-store, must-revalidate, private, max-age=0"
        assert r.headers["Pragma"] == "no-cache"
        assert await r.read() == GIF
    async with client.get(url(front, "/i"), params={"url": "x", "type": "bogus"}) as r:
        assert (r.status, await r.read()) == (200, GIF)
        assert r.headers["X-Shardflow-Error"].startswith("type: unknown type 'bogus'")
    async with client.post(
        url(front, "/i"),
        data="event_id=px2&url=https%3A%2F%2Fb.example%2F",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as r:
        assert (r.status, await r.read()) == (200, GIF)
    events = {e["event_id"]: e for e in await eventually(lambda: when(stream, 2), timeout=10, what="2")}
    assert events["px1"]["properties"] == {"campaign": "c1"}
    assert (events["px1"]["user_agent"], events["px1"]["ts"]) == ("UA/2", format_ts(NOW_MS / 1000))
    assert events["px2"]["url"] == "https://b.example/"


async def test_cors(make_front: FrontFactory, client: aiohttp.ClientSession) -> None:
    async with make_front(cors_origins=("https://shop.example",)) as front:
        headers = {
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        }
        async with client.options(url(front, "/v1/events"), headers=headers) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            assert r.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
            assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
        async with client.options(url(front, "/v1/events"), headers={"Origin": "https://evil.example"}) as r:
            assert (r.status, await r.json()) == (
                403,
                {"error": "origin 'https://evil.example' is not allowed"},
            )
        async with client.post(
            url(front, "/v1/events"), json={}, headers={"Origin": "https://shop.example"}
        ) as r:
            assert r.status == 202
            assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        async with client.post(
            url(front, "/v1/events"), json={}, headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 202
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_forwarded_for_only_from_trusted_proxies(
    make_front: FrontFactory, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    xff = {"X-Forwarded-For": "198.51.100.7, 10.0.0.2"}
    for event_id, proxies in (("untrusted", ()), ("trusted", ("127.0.0.0/8", "10.0.0.0/8"))):
        async with make_front(trusted_proxies=proxies) as front:
            post = client.post(url(front, "/v1/events"), json={"event_id": event_id}, headers=xff)
            async with post as r:
                assert r.status == 202
    events = {e["event_id"]: e for e in await eventually(lambda: when(stream, 2), timeout=10, what="2")}
    assert events["untrusted"]["ip"] == "127.0.0.1"
    assert events["trusted"]["ip"] == "198.51.100.7"


async def test_health_ready_metrics_openapi(front: FrontEnd, client: aiohttp.ClientSession) -> None:
    async with client.get(url(front, "/healthz")) as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})
    await eventually(lambda: _ready(client, front), timeout=10, what="ready")
    async with client.post(url(front, "/v1/events"), json={}) as r:
        assert r.status == 202
    async with client.get(url(front, "/metrics")) as r:
        text = await r.text()
        for name in (
            'shardflow_ingest_events_total{result="accepted"}',
            "shardflow_ingest_request_seconds_bucket",
            "shardflow_buffer_events",
            "shardflow_spool_bytes",
        ):
            assert name in text
    async with client.get(url(front, "/openapi.json")) as r:
        spec = orjson.loads(await r.read())
        assert {"/v1/events", "/v1/page", "/v1/track", "/v1/identify", "/v1/batch", "/i", "/readyz"} <= set(
            spec["paths"]
        )


async def _ready(client: aiohttp.ClientSession, front: FrontEnd) -> bool:
    async with client.get(url(front, "/readyz")) as r:
        return r.status == 200 and await r.json() == {"status": "ready"}
