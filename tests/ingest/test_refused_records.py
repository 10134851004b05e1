"""A record the stream refuses as invalid costs that record only, never the batch it rode in.

Real parts: the embedded stream, a real spool on disk, the real flusher, and the real front end
over HTTP for the cases a client can cause.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from processor import metrics
from processor.buffer import Buffer
from processor.event import encode_dead_letter
from processor.flusher import Flusher
from processor.ingest.server import FrontEnd
from processor.spool import Spool
from processor.streams.base import MAX_RECORD_BYTES
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import dead_letters_on_stream, events_on_stream, url
from tests.support.wait import eventually

_EMOJI = "\U0001f600"  # four bytes in UTF-8
_JSON = {"Content-Type": "application/json"}


def _event(n: int) -> dict[str, Any]:
    return {
        "event_id": f"good-{n}",
        "anonymous_id": f"visitor-{n}",
        "received_at": "2026-01-01T00:00:00.000Z",
        "url": "https://example.com/",
    }


async def test_one_oversized_record_does_not_drop_the_good_ones_beside_it(
    tmp_path: Path, stream: EmbeddedStream
) -> None:
    failed_before = metrics.PUT_RECORDS.labels("failed")._value.get()
    spool = Spool(tmp_path / "spool")
    buffer = Buffer(64 * 1024 * 1024)
    spool.on_written = buffer.offer
    flusher = Flusher(stream, spool, buffer, put_timeout=10.0)
    await spool.open()
    try:
        await flusher.start()
        good = [(f"visitor-{n}", orjson.dumps(_event(n))) for n in range(20)]
        oversized = ("visitor-big", b"x" * (MAX_RECORD_BYTES + 1))
        await spool.append([*good[:10], oversized, *good[10:]])
        assert await flusher.drain(20.0)
        events = await events_on_stream(stream)
    finally:
        await flusher.stop()
        await spool.close()
    assert sorted(e["event_id"] for e in events) == sorted(f"good-{n}" for n in range(20))
    assert metrics.PUT_RECORDS.labels("failed")._value.get() - failed_before == 1


def test_a_dead_letter_record_fits_the_stream_whatever_the_payload() -> None:
    for payload in (_EMOJI * 300_000, "\x01" * 300_000, (_EMOJI * 300_000).encode()):
        record = encode_dead_letter("ingest", "title: too long", payload)
        assert len(record) + 36 <= MAX_RECORD_BYTES  # a UUID partition key beside it
        letter = orjson.loads(record)["dead_letter"]
        assert letter["payload"].endswith("...[truncated]")
    small = encode_dead_letter("ingest", "r", "é" * 10)
    assert orjson.loads(small)["dead_letter"]["payload"] == "é" * 10


async def test_a_huge_rejected_event_is_filed_and_the_good_events_of_its_request_arrive(
    front: FrontEnd, stream: EmbeddedStream, client: aiohttp.ClientSession
) -> None:
    bad = {"event_id": "bad", "title": _EMOJI * 270_000}  # rejected: title over 8192 characters
    body = [*({"event_id": f"good-{n}", "anonymous_id": f"v{n}"} for n in range(10)), bad]
    async with client.post(url(front, "/v1/events"), data=orjson.dumps(body), headers=_JSON) as r:
        assert r.status == 202
        answer = await r.json()
    assert answer["accepted"] == 10 and [x["index"] for x in answer["rejected"]] == [10]
    events = await eventually(
        lambda: _at_least(stream, 10), timeout=20, what="the 10 good events on the stream"
    )
    assert sorted(e["event_id"] for e in events) == sorted(f"good-{n}" for n in range(10))
    letters = await eventually(lambda: _letters(stream), timeout=20, what="the dead letter")
    assert letters[0].payload.endswith("...[truncated]")


async def test_an_accepted_event_with_the_longest_wide_key_fits_the_stream(
    front: FrontEnd, stream: EmbeddedStream, client: aiohttp.ClientSession
) -> None:
    """The partition key may take 256 four-byte characters: the event's size bound leaves room."""
    key = _EMOJI * 256
    big: dict[str, Any] = {
        "event_id": f"big-{uuid.uuid4()}",
        "anonymous_id": key,
        "properties": {f"p{i}": "a" * 8000 for i in range(130)},
    }
    small = [{"event_id": f"s-{n}", "anonymous_id": f"v{n}"} for n in range(5)]
    # about 150 bytes under the front end's old bound once the server adds its fields, so the
    # record (event plus a 1,024-byte key) is over the stream's 1 MiB
    pad = MAX_RECORD_BYTES - 880 - len(orjson.dumps(big)) - len(',"pad":""')
    big["properties"]["pad"] = "b" * pad
    async with client.post(url(front, "/v1/events"), data=orjson.dumps([*small, big]), headers=_JSON) as r:
        assert r.status == 202
        answer = await r.json()
    if answer["accepted"] == 6:
        # accepted: then the stream must hold it, and the 5 beside it
        events = await eventually(lambda: _at_least(stream, 6), timeout=20, what="6 events")
        assert len(events) == 6
    else:
        assert answer["accepted"] == 5
        await eventually(lambda: _at_least(stream, 5), timeout=20, what="5 events")
        letters = await eventually(lambda: _letters(stream), timeout=20, what="the dead letter")
        assert len(letters) == 1


async def _at_least(stream: EmbeddedStream, n: int) -> list[dict[str, Any]] | None:
    events = await events_on_stream(stream)
    return events if len(events) >= n else None


async def _letters(stream: EmbeddedStream) -> list[Any] | None:
    await asyncio.sleep(0)
    return await dead_letters_on_stream(stream) or None
