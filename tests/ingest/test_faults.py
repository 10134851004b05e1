"""The front end against a real Kinesis-compatible server (kinesalite) behind the fault proxy:
per-record failures, a 10 s stall, a stream that is down until the spool fills."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from processor import metrics
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.kinesis import KinesisStream
from tests.ingest.conftest import events_on_stream, url
from tests.support.kinesalite import kinesalite
from tests.support.kinesis_faults import KinesisFaultProxy, ProxiedRecord
from tests.support.wait import eventually


@pytest.fixture(scope="module")
def kinesalite_endpoint() -> Iterator[str]:
    with kinesalite() as endpoint:
        yield endpoint


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(kinesalite_endpoint) as p:
        yield p


@pytest.fixture
async def kstream(proxy: KinesisFaultProxy) -> AsyncIterator[KinesisStream]:
    name = f"ingest-{uuid.uuid4().hex[:10]}"
    stream = KinesisStream.from_uri(f"kinesis://{name}?region=us-east-1&endpoint={proxy.endpoint}")
    await stream.create(2)
    yield stream
    await stream.close()


def event(event_id: str, key: str, n: int) -> dict[str, Any]:
    return {"event_id": event_id, "anonymous_id": key, "properties": {"n": n}}


async def all_ids(stream: KinesisStream, n: int) -> list[dict[str, Any]] | None:
    events = await events_on_stream(stream)
    return events if len({e["event_id"] for e in events}) >= n else None


async def test_failed_records_are_retried_alone_and_a_key_keeps_its_order(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    retried_before = metrics.PUT_RECORDS.labels("retried")._value.get()
    # Record "a-0" fails its first three puts; meanwhile a-1..a-9 arrive in later requests.
    failures = [0]

    def first_three_of_a0(record: ProxiedRecord) -> bool:
        if b'"a-0"' in record.data and failures[0] < 3:
            failures[0] += 1
            return True
        return False

    proxy.fail_records(first_three_of_a0)
    config = replace(base_config, put_timeout=5.0)
    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        for n in range(10):
            body = [event(f"a-{n}", "visitor-a", n), event(f"b-{n}", f"visitor-b{n}", n)]
            async with client.post(url(front, "/v1/events"), json=body) as r:
                assert r.status == 202
        events = await eventually(lambda: all_ids(kstream, 20), timeout=30, what="20 events")
    a_order = [e["event_id"] for e in events if e["anonymous_id"] == "visitor-a"]
    assert a_order == [f"a-{n}" for n in range(10)]
    assert proxy.failed_records == 3
    assert [r.partition_key for r in proxy.put_log].count("visitor-a") == 10
    assert metrics.PUT_RECORDS.labels("retried")._value.get() - retried_before == 3


async def test_a_fraction_of_records_failing_loses_nothing(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    proxy.fail_records(0.3, "InternalFailure", calls=6)
    async with FrontEnd(base_config, kstream) as front, aiohttp.ClientSession() as client:
        lines = b"\n".join(orjson.dumps(event(f"f-{i}", f"k{i % 37}", i)) for i in range(1500))
        async with client.post(
            url(front, "/v1/events"), data=lines, headers={"Content-Type": "application/x-ndjson"}
        ) as r:
            assert (r.status, await r.json()) == (202, {"accepted": 1500, "rejected": []})
        await eventually(lambda: all_ids(kstream, 1500), timeout=30, what="1500 events")
    assert proxy.failed_records > 0


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_a_stream_stalled_for_10s_never_slows_the_handlers(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    """A real loopback server that stops answering for 10 s while a client sends steadily."""
    config = replace(base_config, put_timeout=3.0)
    sent: list[str] = []

    async def send_for(client: aiohttp.ClientSession, front: FrontEnd, seconds: float) -> list[float]:
        latencies: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            event_id = f"s-{len(sent)}"
            start = time.perf_counter()
            async with client.post(
                url(front, "/v1/events"), json=event(event_id, f"k{len(sent) % 50}", 0)
            ) as r:
                assert r.status == 202
                await r.read()
            latencies.append(time.perf_counter() - start)
            sent.append(event_id)
            await asyncio.sleep(0.01)
        return latencies

    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        await send_for(client, front, 0.5)  # warm-up, not counted
        normal = await send_for(client, front, 2.0)
        proxy.stall = True
        stalled = await send_for(client, front, 10.0)
        assert front.ready() is not None
        proxy.stall = False
        await eventually(lambda: all_ids(kstream, len(sent)), timeout=60, what=f"{len(sent)} events")
    p99_normal, p99_stalled = _p99(normal), _p99(stalled)
    assert len(stalled) > 300
    print(f"p99 normal {p99_normal * 1000:.2f} ms, stalled {p99_stalled * 1000:.2f} ms")
    # A few times the healthy p99, plus 10 ms for scheduler jitter on a shared 2-core machine.
    assert p99_stalled <= 5 * p99_normal + 0.010, (p99_normal, p99_stalled)


async def test_spool_full_answers_503_then_recovers(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    config = replace(
        base_config,
        spool_max_bytes=256 * 1024,
        spool_segment_bytes=32 * 1024,
        buffer_max_bytes=16 * 1024,
        put_timeout=1.0,
    )
    proxy.down = True
    acked: list[str] = []
    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        for i in range(10_000):
            body = [event(f"full-{i}-{j}", f"k{j}", j) for j in range(10)]
            async with client.post(url(front, "/v1/events"), json=body) as r:
                if r.status == 503:
                    assert r.headers["Retry-After"] == "5"
                    answer = await r.json()
                    assert answer["error"].startswith("the spool is full (the spool holds ")
                    assert answer["error"].endswith("bytes of its 262144-byte limit); retry later")
                    break
                assert r.status == 202
                acked.extend(e["event_id"] for e in body)
        else:
            pytest.fail("the spool never filled")
        async with client.get(url(front, "/readyz")) as r:
            assert r.status == 503
            reason = (await r.json())["error"]
            assert reason.startswith("spool full: ")
            assert "; stream unreachable: " in reason
        proxy.clear()

        async def ready() -> bool:
            async with client.get(url(front, "/readyz")) as r:
                return r.status == 200

        await eventually(ready, timeout=30, what="ready again")
        async with client.post(url(front, "/v1/events"), json=event("after", "k", 0)) as r:
            assert r.status == 202
        acked.append("after")
        events = await eventually(lambda: all_ids(kstream, len(acked)), timeout=60, what="every acked event")
    assert {e["event_id"] for e in events} == set(acked)


async def test_stop_drains_within_the_timeout_and_the_next_start_sends_the_rest(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    config = replace(base_config, drain_timeout=0.5, put_timeout=1.0)
    proxy.stall = True
    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        body = [event(f"d-{i}", f"k{i % 5}", i) for i in range(200)]
        async with client.post(url(front, "/v1/events"), json=body) as r:
            assert r.status == 202
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert any(config.spool_dir.glob("*.seg"))
    proxy.stall = False
    async with FrontEnd(config, kstream):
        await eventually(lambda: all_ids(kstream, 200), timeout=30, what="200 events after restart")


async def warmed_up(
    front: FrontEnd, client: aiohttp.ClientSession, kstream: KinesisStream, proxy: KinesisFaultProxy
) -> int:
    """Put one event through (the client has its shard map then); the PutRecords calls so far."""
    async with client.post(url(front, "/v1/events"), json=event("warm", "k-warm", 0)) as r:
        assert r.status == 202
    await eventually(lambda: all_ids(kstream, 1), timeout=30, what="the first event")
    return proxy.calls["PutRecords"]


async def test_small_puts_gather_while_one_is_in_flight(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    """Nagle's rule: while a put that did not fill a batch is in flight, the records behind it
    wait to fill the next call instead of each request's record going out in a call of its own
    (eight calls in flight at once before, then a call for every few records). Each event has
    a key of its own: Kinesis may fail one record and store a later one of its key in the same
    call, so a call carries at most one record of a key, whatever the rule."""
    config = replace(base_config, put_timeout=60.0)
    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        before = await warmed_up(front, client, kstream, proxy)
        proxy.stall = True
        for n in range(300):
            async with client.post(url(front, "/v1/events"), json=event(f"n-{n}", f"k{n}", n)) as r:
                assert r.status == 202
            if n == 0:

                async def first_put() -> bool:
                    return proxy.calls["PutRecords"] > before

                await eventually(first_put, timeout=10, what="the first put")
        held = proxy.calls["PutRecords"] - before
        proxy.stall = False
        events = await eventually(lambda: all_ids(kstream, 301), timeout=30, what="300 events")
    assert held == 1
    assert proxy.calls["PutRecords"] - before <= 3, proxy.calls
    assert len(events) == 301


async def test_a_small_call_lingers_for_more_records(
    base_config: IngestConfig, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    """With no call in flight, a call that would not fill its batch waits `flush_linger` for more
    records: five requests sent one after another travel in one PutRecords call (without the
    linger the first goes alone and the others follow in more calls)."""
    config = replace(base_config, flush_linger=0.5)
    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        before = await warmed_up(front, client, kstream, proxy)
        for n in range(5):
            async with client.post(url(front, "/v1/events"), json=event(f"l-{n}", f"k{n}", n)) as r:
                assert r.status == 202
        await eventually(lambda: all_ids(kstream, 6), timeout=30, what="five more events")
    assert proxy.calls["PutRecords"] - before == 1
