from __future__ import annotations

import aiohttp

from processor.ingest.server import FrontEnd
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import events_on_stream, url
from tests.support.wait import eventually


async def test_one_event_reaches_the_stream(
    front: FrontEnd, client: aiohttp.ClientSession, stream: EmbeddedStream
) -> None:
    async with client.post(
        url(front, "/v1/events"), json={"url": "https://a.example/x", "event_id": "e1"}
    ) as r:
        assert r.status == 202
        assert await r.json() == {"accepted": 1, "rejected": []}
    events = await eventually(lambda: events_on_stream(stream), timeout=10, what="event on stream")
    assert [e["event_id"] for e in events] == ["e1"]
    assert events[0]["ip"] == "127.0.0.1"
