"""The HTTP layer as clients really use it: keep-alive, pipelining, slow clients, fuzzed bodies,
and a buffer far smaller than the load (events wait on disk and still arrive in order)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.ingest.server import FrontEnd
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import FrontFactory, events_on_stream, url
from tests.support.wait import eventually


async def _responses(reader: asyncio.StreamReader, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1]
        )
        out.append((head.split(b"\r\n")[0], await reader.readexactly(length)))
    return out


def _post(body: bytes, path: str = "/v1/events") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def test_pipelined_requests_on_one_connection_answer_in_order(front: FrontEnd) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
    writer.write(b"".join(_post(orjson.dumps({"event_id": f"p{i}"})) for i in range(20)) + _post(b"nope"))
    answers = await _responses(reader, 21)
    writer.close()
    assert [a[0] for a in answers] == [b"HTTP/1.1 202 Accepted"] * 20 + [b"HTTP/1.1 400 Bad Request"]
    assert orjson.loads(answers[0][1]) == {"accepted": 1, "rejected": []}


async def test_keep_alive_reuses_one_connection(front: FrontEnd) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as client:
        for i in range(50):
            async with client.post(url(front, "/v1/events"), json={"event_id": f"ka{i}"}) as r:
                assert r.status == 202
                await r.read()
        assert len(connector._conns) == 1  # one idle pooled connection served all 50


async def test_slow_loris_connections_are_cut(make_front: FrontFactory) -> None:
    async with make_front(idle_timeout=1.0, request_timeout=1.0) as front:
        # Headers trickling in, never finished.
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        for _ in range(30):
            await asyncio.sleep(0.1)
            if reader.at_eof():
                break
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except ConnectionError:
                break
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - start < 3
        writer.close()
        # A body promised but sent too slowly.
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        head, _, body = (await asyncio.wait_for(reader.read(4096), 5)).partition(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")
        assert orjson.loads(body) == {"error": "the body took longer than 1 s to arrive"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
event_like = st.dictionaries(
    st.sampled_from(["event_id", "type", "url", "ts", "user_id", "properties", "context", "name", "x"]),
    json_values,
    max_size=6,
)


async def test_fuzzed_bodies_never_get_a_500(front: FrontEnd) -> None:
    async with aiohttp.ClientSession() as client:

        async def status(path: str, body: bytes, content_type: str) -> int:
            async with client.post(url(front, path), data=body, headers={"Content-Type": content_type}) as r:
                payload = await r.read()
                if r.status != 200 or not path.startswith("/i"):
                    assert r.status in (200, 202, 400, 401, 413, 415), (r.status, payload)
                return r.status

        bodies = st.one_of(
            st.binary(max_size=200),
            json_values.map(orjson.dumps),
            event_like.map(orjson.dumps),
            st.lists(event_like, max_size=4).map(orjson.dumps),
            st.lists(event_like, max_size=4).map(lambda xs: b"\n".join(orjson.dumps(x) for x in xs)),
        )
        paths = st.sampled_from(["/v1/events", "/v1/track", "/v1/page", "/v1/batch", "/i"])
        types = st.sampled_from(["application/json", "application/x-ndjson", "text/plain"])
        loop = asyncio.get_running_loop()
        seen: list[Any] = []

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(path=paths, body=bodies, content_type=types)
        def check(path: str, body: bytes, content_type: str) -> None:
            seen.append((path, body, content_type))

        check()
        seen += [
            ("/v1/events", b'{"ts": 1e400, "url": "x"}', "application/json"),
            ("/v1/events", b'{"ts": 123456789012345678901234567890}', "application/json"),
            ("/v1/events", b'{"ts": -1}', "application/json"),
            ("/v1/events", b'{"event_id": "\\ud800"}', "application/json"),
            ("/v1/batch", b'{"batch": [1, null, {"type": "track"}]}', "application/json"),
            ("/v1/batch", b'{"batch": [{"type": "page", "userId": "u", "context": 5}]}', "application/json"),
        ]
        for path, body, content_type in seen:
            await status(path, body, content_type)
        assert loop.is_running()


async def test_events_wait_on_disk_when_the_buffer_is_tiny_and_keep_key_order(
    make_front: FrontFactory, stream: EmbeddedStream
) -> None:
    async with make_front(buffer_max_bytes=2048, spool_segment_bytes=16 * 1024) as front:
        async with aiohttp.ClientSession() as client:
            for start in range(0, 3000, 300):
                lines = b"\n".join(
                    orjson.dumps({"event_id": f"t{i}", "anonymous_id": f"v{i % 5}", "properties": {"n": i}})
                    for i in range(start, start + 300)
                )
                async with client.post(
                    url(front, "/v1/events"), data=lines, headers={"Content-Type": "application/x-ndjson"}
                ) as r:
                    assert r.status == 202

        async def arrived() -> list[dict[str, Any]] | None:
            events = await events_on_stream(stream)
            return events if len({e["event_id"] for e in events}) >= 3000 else None

        events = await eventually(arrived, timeout=30, what="3000 events")
    for key in range(5):
        ns = [e["properties"]["n"] for e in events if e["anonymous_id"] == f"v{key}"]
        assert ns == sorted(ns)
        assert len(ns) == 600
