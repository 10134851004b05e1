"""FrontEnd -> KinesisStream -> fault proxy -> kinesalite: the front end keeps answering while
Kinesis throttles or the stream is gone; events wait in the spool and all arrive, once each."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.kinesis import KinesisStream
from tests.ingest.conftest import events_on_stream, url
from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.wait import eventually


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(kinesalite_endpoint) as p:
        yield p


def config(tmp_path: Path) -> IngestConfig:
    return IngestConfig(
        port=0, spool_dir=tmp_path / "spool", drain_timeout=5.0, probe_interval=0.2, put_timeout=3.0
    )


async def post_events(client: aiohttp.ClientSession, front: FrontEnd, prefix: str, n: int) -> float:
    """POST n events, 10 per request; the slowest answer in seconds (every answer must be 202)."""
    slowest = 0.0
    for start in range(0, n, 10):
        body = [
            {"event_id": f"{prefix}-{i}", "anonymous_id": f"visitor-{i % 7}", "properties": {"n": i}}
            for i in range(start, min(n, start + 10))
        ]
        began = time.monotonic()
        async with client.post(url(front, "/v1/events"), json=body) as answer:
            assert answer.status == 202, await answer.text()
        slowest = max(slowest, time.monotonic() - began)
    return slowest


async def arrived(stream: KinesisStream, expected: set[str]) -> list[dict[str, Any]] | None:
    events = await events_on_stream(stream)
    return events if expected <= {e["event_id"] for e in events} else None


def assert_once_each(events: list[dict[str, Any]], expected: set[str]) -> None:
    ids = [e["event_id"] for e in events if e["event_id"] in expected]
    assert sorted(ids) == sorted(expected), "every event exactly once"


async def test_throttling_storm(tmp_path: Path, proxy: KinesisFaultProxy, stream_name: str) -> None:
    uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={proxy.endpoint}&idle_wait=0"
    async with KinesisStream.from_uri(uri) as stream:
        await stream.create(2)
        proxy.throttle_next(3, targets=["PutRecords"])
        # a hot shard: every record of some keys fails, call after call, as Kinesis fails a shard
        # over its limit (a random fraction would split a key inside one call, which no sender
        # can put back in order)
        hot = {"visitor-1", "visitor-4"}
        proxy.fail_records(lambda r: r.partition_key in hot, calls=5)
        async with FrontEnd(config(tmp_path), stream) as front, aiohttp.ClientSession() as client:
            slowest = await post_events(client, front, "storm", 300)
            assert slowest < 2.0, "handlers never wait on a throttled stream"
            expected = {f"storm-{i}" for i in range(300)}
            events = await eventually(lambda: arrived(stream, expected), timeout=60, what="all events")
        assert proxy.calls["PutRecords"] > 5 and proxy.failed_records > 0
        assert_once_each(events, expected)
        for key in range(7):
            mine = [e["properties"]["n"] for e in events if e["anonymous_id"] == f"visitor-{key}"]
            assert mine == sorted(mine), "a throttled key keeps its order"


async def test_stream_not_found_then_back(tmp_path: Path, proxy: KinesisFaultProxy, stream_name: str) -> None:
    uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={proxy.endpoint}&idle_wait=0"
    async with KinesisStream.from_uri(uri) as stream:
        await stream.create(2)
        async with FrontEnd(config(tmp_path), stream) as front, aiohttp.ClientSession() as client:
            await post_events(client, front, "before", 20)
            before = {f"before-{i}" for i in range(20)}
            await eventually(lambda: arrived(stream, before), timeout=30, what="the first events")
            proxy.not_found = True
            await post_events(client, front, "gone", 50)

            async def not_ready() -> str | None:
                return front.ready()

            reason = await eventually(not_ready, timeout=10, what="readyz reports the stream")
            assert "not found" in reason
            proxy.not_found = False
            expected = before | {f"gone-{i}" for i in range(50)}
            events = await eventually(lambda: arrived(stream, expected), timeout=30, what="all events")
        assert_once_each(events, expected)


async def test_stream_deleted_and_recreated(
    tmp_path: Path, proxy: KinesisFaultProxy, kinesalite_endpoint: str, stream_name: str
) -> None:
    """A real DeleteStream mid-run: what was posted while it was gone arrives once it is back."""
    uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={proxy.endpoint}&idle_wait=0"
    direct_uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={kinesalite_endpoint}"
    async with KinesisStream.from_uri(uri) as stream, KinesisStream.from_uri(direct_uri) as admin:
        await stream.create(2)
        async with FrontEnd(config(tmp_path), stream) as front, aiohttp.ClientSession() as client:
            await post_events(client, front, "first", 10)
            await eventually(
                lambda: arrived(stream, {f"first-{i}" for i in range(10)}), timeout=30, what="first events"
            )
            await (await admin._get_client()).delete_stream(StreamName=stream_name)
            slowest = await post_events(client, front, "orphan", 40)
            assert slowest < 2.0

            async def not_ready() -> str | None:
                return front.ready()

            await eventually(not_ready, timeout=10, what="readyz reports the missing stream")
            await admin.create(2)
            expected = {f"orphan-{i}" for i in range(40)}
            events = await eventually(lambda: arrived(stream, expected), timeout=30, what="orphans")
        assert_once_each(events, expected)
