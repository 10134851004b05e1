"""Every kind of bad input gets its exact status and a JSON body naming the problem."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import aiohttp
import orjson
import pytest

from processor.ingest.body import MAX_DEPTH, MAX_FIELDS
from processor.ingest.config import IngestConfig
from processor.ingest.intake import Intake
from processor.ingest.server import FrontEnd
from processor.spool import Spool
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import FrontFactory, dead_letters_on_stream, events_on_stream, url
from tests.support.wait import eventually

JSON = {"Content-Type": "application/json"}


async def post(
    client: aiohttp.ClientSession, front: FrontEnd, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with client.post(url(front, "/v1/events"), data=body, headers=headers or JSON) as r:
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"hello", "body is not valid JSON: unexpected character, expected a JSON value at position 0"),
        (b'{"url": "https://a.example/"', "body is not valid JSON: unexpected end of data at position 28"),
        (b'{"url": "\xff\xfe"}', "body is not valid UTF-8 (byte 9)"),
        (b"42", "body must be a JSON object, an array of objects, or NDJSON, not a number"),
        (b'"text"', "body must be a JSON object, an array of objects, or NDJSON, not a string"),
        (b"null", "body must be a JSON object, an array of objects, or NDJSON, not null"),
        (b"", "body is empty; send a JSON object or array"),
        (b"[" * 5000 + b"]" * 5000, "body is nested deeper than 64 levels"),
        (b'{"properties":' * 70 + b"{}" + b"}" * 70, "body is nested deeper than 64 levels"),
    ],
)
async def test_body_errors_are_400(
    front: FrontEnd, client: aiohttp.ClientSession, body: bytes, error: str
) -> None:
    assert await post(client, front, body) == (400, {"error": error})


async def test_ten_thousand_fields_is_400(front: FrontEnd, client: aiohttp.ClientSession) -> None:
    props = {f"f{i}": i for i in range(10_000)}
    body = orjson.dumps({"url": "https://a.example/", "properties": props})
    assert await post(client, front, body) == (
        400,
        {"error": "body has an object with 10000 fields; the limit is 1000"},
    )


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"url": 5}, "url: must be a string, not a number"),
        (
            {"type": "purchase"},
            "type: unknown type 'purchase'; expected one of alias, group, identify, page, screen, track",
        ),
        ({"ts": "2001-01-01T00:00:00Z"}, "ts: is more than 31622400 s in the past"),
        ({"ts": "2999-01-01T00:00:00Z"}, "ts: is more than 86400 s in the future"),
        ({"colour": "red"}, "colour: is not a known field"),
        ({"properties": [1, 2]}, "properties: must be an object, not an array"),
    ],
)
async def test_a_single_bad_event_is_listed_as_rejected_and_dead_lettered(
    front: FrontEnd,
    client: aiohttp.ClientSession,
    stream: EmbeddedStream,
    event: dict[str, Any],
    error: str,
) -> None:
    status, body = await post(client, front, orjson.dumps(event))
    assert (status, body) == (202, {"accepted": 0, "rejected": [{"index": 0, "error": error}]})
    letters = await eventually(lambda: dead_letters_on_stream(stream), timeout=10, what="dead letter")
    assert [(d.stage, d.reason) for d in letters] == [("ingest", error)]


async def test_bad_events_in_an_array_are_listed_and_the_good_ones_kept(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    body = b'[{"event_id": "a"}, {"url": 1}, 7, {"event_id": "b", "ts": 1}]'
    status, answer = await post(client, front, body)
    assert (status, answer) == (
        202,
        {
            "accepted": 1,
            "rejected": [
                {"index": 1, "error": "url: must be a string, not a number"},
                {"index": 2, "error": "an event must be a JSON object, not a number"},
                {"index": 3, "error": "ts: is more than 31622400 s in the past"},
            ],
        },
    )
    records = await eventually(
        lambda: _when_len(dead_letters_on_stream(stream), 3), timeout=10, what="3 dead letters"
    )
    assert sorted(d.payload for d in records) == ["7", '{"event_id":"b","ts":1}', '{"url":1}']
    assert [e["event_id"] for e in await events_on_stream(stream)] == ["a"]


async def _when_len(coro: Any, n: int) -> Any:
    got = await coro
    return got if len(got) >= n else None


async def test_ndjson_keeps_good_lines_and_rejects_bad_ones(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    body = b'{"event_id": "n1"}\n\n{"event_id": \n{"event_id": "n2", "type": "track"}\n'
    status, answer = await post(client, front, body, {"Content-Type": "application/x-ndjson"})
    assert (status, answer) == (
        202,
        {
            "accepted": 2,
            "rejected": [
                {"index": 1, "error": "line is not valid JSON: unexpected end of data at position 13"}
            ],
        },
    )
    events = await eventually(lambda: _when_len(events_on_stream(stream), 2), timeout=10, what="2 events")
    assert sorted(e["event_id"] for e in events) == ["n1", "n2"]


async def test_ndjson_lines_over_the_structure_limits_are_named_as_such(
    front: FrontEnd, client: aiohttp.ClientSession
) -> None:
    """Lines are checked against the body limits only when the event checks have a doubt: the
    event limits sit within the body's, so what those pass needs no structure walk."""
    deep = b'{"event_id": "d", "properties": ' + b'{"a": ' * 70 + b"{}" + b"}" * 71
    wide = orjson.dumps({"event_id": "w", "properties": {f"k{i}": i for i in range(1001)}})
    deep_event = b'{"event_id": "e", "properties": ' + b'{"a": ' * 40 + b"{}" + b"}" * 41
    good = b'{"event_id": "g", "properties": {"a": {"b": [1, 2]}}}'
    body = b"\n".join([good, deep, b"  ", wide, deep_event, good.replace(b'"g"', b'"h"')])
    status, answer = await post(client, front, body, {"Content-Type": "application/x-ndjson"})
    assert (status, answer) == (
        202,
        {
            "accepted": 2,
            "rejected": [
                {"index": 1, "error": "line is nested deeper than 64 levels"},
                {"index": 2, "error": "line has an object with 1001 fields; the limit is 1000"},
                {"index": 3, "error": "properties: is nested deeper than 32 levels"},
            ],
        },
    )


def test_the_event_limits_sit_within_the_body_limits() -> None:
    """What `validate_events` passes never breaks `check_structure` (see `Intake.add_all`)."""
    limits = Intake(IngestConfig(port=0), cast(Spool, None)).limits
    assert limits.max_depth + 1 <= MAX_DEPTH
    assert limits.max_object_keys <= MAX_FIELDS


@pytest.mark.parametrize("kind", ["multipart/form-data; boundary=x", "application/xml", "image/png"])
async def test_wrong_content_type_is_415(front: FrontEnd, client: aiohttp.ClientSession, kind: str) -> None:
    assert await post(client, front, b'{"url": "x"}', {"Content-Type": kind}) == (
        415,
        {
            "error": f"content type {kind.split(';')[0]!r} is not supported; send "
            "application/json, application/jsonlines, application/ndjson, application/x-jsonlines, "
            "application/x-ndjson, application/x-www-form-urlencoded, text/plain"
        },
    )


@pytest.mark.parametrize(
    "kind", ["application/x-www-form-urlencoded", "text/plain;charset=UTF-8", "application/json", None]
)
async def test_json_is_taken_under_what_curl_and_browsers_send(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream, kind: str | None
) -> None:
    """`curl -d` sends x-www-form-urlencoded, `navigator.sendBeacon` text/plain: both are JSON here."""
    body = b'{"url":"https://shop.example/p","anonymous_id":"a1","event_id":"c1"}'
    headers = {"Content-Type": kind} if kind else {}
    async with client.post(
        url(front, "/v1/events"), data=body, headers=headers, skip_auto_headers=["Content-Type"]
    ) as r:
        assert (r.status, await r.json()) == (202, {"accepted": 1, "rejected": []})
    events = await eventually(lambda: _when_len(events_on_stream(stream), 1), timeout=10, what="1 event")
    assert events[0]["url"] == "https://shop.example/p"


@pytest.mark.parametrize("kind", ["application/jsonlines", "application/x-jsonlines", "application/ndjson"])
async def test_ndjson_under_every_ndjson_type(
    front: FrontEnd, client: aiohttp.ClientSession, kind: str
) -> None:
    body = b'{"url":"https://a.example/1"}\n{"url":"https://a.example/2"}\n'
    assert await post(client, front, body, {"Content-Type": kind}) == (202, {"accepted": 2, "rejected": []})


async def test_ndjson_is_not_guessed_from_the_body(front: FrontEnd, client: aiohttp.ClientSession) -> None:
    body = b'{"url":"https://a.example/1"}\n{"url":"https://a.example/2"}\n'
    status, answer = await post(client, front, body, {"Content-Type": "text/plain"})
    assert status == 400
    assert answer == {"error": "body is not valid JSON: unexpected content after document at position 30"}


async def test_body_over_max_body_is_413_without_reading_it(
    make_front: FrontFactory, client: aiohttp.ClientSession
) -> None:
    async with make_front(max_body=1000) as front:
        assert await post(client, front, b'{"url": "' + b"x" * 2000 + b'"}') == (
            413,
            {"error": "body of 2011 bytes is over the 1000-byte limit"},
        )

        # A chunked body that never ends: the answer must come while the client is still sending.
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

        async def endless() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
                    await writer.drain()

        feeder = asyncio.create_task(endless())
        head, _, body = (await asyncio.wait_for(reader.read(4096), 10)).partition(b"\r\n\r\n")
        feeder.cancel()
        writer.close()
        assert head.startswith(b"HTTP/1.1 413 ")
        assert orjson.loads(body) == {"error": "body is over the 1000-byte limit"}


async def test_many_events_in_an_array_within_the_limit(
    front: FrontEnd, client: aiohttp.ClientSession
) -> None:
    events = [{"event_id": f"e{i}"} for i in range(2000)]
    status, answer = await post(client, front, orjson.dumps(events))
    assert (status, answer) == (202, {"accepted": 2000, "rejected": []})


async def test_an_event_over_the_1_mib_record_limit_is_rejected(
    front: FrontEnd, client: aiohttp.ClientSession
) -> None:
    big = {"event_id": "big", "properties": {f"p{i}": "x" * 8000 for i in range(140)}}
    status, answer = await post(client, front, orjson.dumps([big, {"event_id": "small"}]))
    assert status == 202
    assert answer["accepted"] == 1
    [rejected] = answer["rejected"]
    assert rejected["index"] == 0
    assert rejected["error"].endswith("bytes encoded; the limit is 1048064")
