"""KinesisStream against a real kinesalite on loopback, with faults from the fault proxy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from processor.errors import ExpiredIterator, StreamNotFound, Throttled
from processor.streams.base import IteratorType, PutRecord, PutResult, Record
from processor.streams.kinesis import KinesisStream
from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.wait import wait_until

UNLIMITED = "limits=off&idle_wait=0"


def uri(name: str, endpoint: str, extra: str = UNLIMITED) -> str:
    return f"kinesis://{name}?region=us-east-1&endpoint={endpoint}&{extra}"


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(kinesalite_endpoint) as p:
        yield p


async def read_all(stream: KinesisStream) -> list[Record]:
    """Every record of every shard, from TRIM_HORIZON to the tip (or shard end)."""
    out: list[Record] = []
    for shard in (await stream.describe()).shards:
        iterator: str | None = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
        while iterator is not None:
            got = await stream.get_records(iterator)
            out.extend(got.records)
            iterator = got.next_iterator
            if not got.records and got.millis_behind_latest == 0:
                break
    return out


async def put_until_acknowledged(stream: KinesisStream, records: list[PutRecord]) -> list[list[int]]:
    """What the flusher does: resend only the failed records, in their original order.

    Returns the indexes sent in each attempt, so a test can check nothing acknowledged went twice.
    """
    pending = list(range(len(records)))
    attempts: list[list[int]] = []
    while pending:
        attempts.append(pending)
        try:
            results: list[PutResult] = await stream.put_records([records[i] for i in pending])
        except Throttled:
            continue
        pending = [i for i, r in zip(pending, results, strict=True) if not r.ok]
    return attempts


async def test_round_trip_every_iterator_type(kinesalite_endpoint: str, stream_name: str) -> None:
    async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as stream:
        await stream.create(1)
        desc = await stream.describe()
        assert desc.status == "ACTIVE" and len(desc.open_shards) == 1
        shard = desc.shards[0].shard_id
        before = time.time() - 1
        results = await stream.put_records([PutRecord(f"e{i}".encode(), f"k{i}") for i in range(5)])
        assert all(r.ok and r.shard_id == shard for r in results)
        seqs = [r.sequence_number for r in results]
        assert seqs == sorted(seqs, key=lambda s: int(s or 0))

        async def data_from(it_type: IteratorType, **kw: object) -> list[bytes]:
            it = await stream.get_shard_iterator(shard, it_type, **kw)  # type: ignore[arg-type]
            return [r.data for r in (await stream.get_records(it)).records]

        everything = [f"e{i}".encode() for i in range(5)]
        assert await data_from(IteratorType.TRIM_HORIZON) == everything
        assert await data_from(IteratorType.AT_SEQUENCE_NUMBER, sequence_number=seqs[2]) == everything[2:]
        assert await data_from(IteratorType.AFTER_SEQUENCE_NUMBER, sequence_number=seqs[2]) == everything[3:]
        assert await data_from(IteratorType.AT_TIMESTAMP, timestamp=before) == everything
        latest = await stream.get_shard_iterator(shard, IteratorType.LATEST)
        await stream.put_records([PutRecord(b"late", "k")])
        got = await stream.get_records(latest)
        assert [r.data for r in got.records] == [b"late"]
        assert got.millis_behind_latest == 0


async def test_closed_shard_ends_and_names_children(kinesalite_endpoint: str, stream_name: str) -> None:
    async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as stream:
        await stream.create(1)
        parent = (await stream.describe()).shards[0].shard_id
        await stream.put_records([PutRecord(b"before", "k")])
        await stream.split_shard(parent)
        it = await stream.get_shard_iterator(parent, IteratorType.TRIM_HORIZON)
        seen: list[bytes] = []
        while True:
            got = await stream.get_records(it)
            seen.extend(r.data for r in got.records)
            if got.next_iterator is None:
                break
            it = got.next_iterator
        assert seen == [b"before"]
        desc = await stream.describe()
        children = tuple(s.shard_id for s in desc.open_shards)
        assert sorted(got.child_shard_ids) == sorted(children)
        assert all(s.parent_shard_ids == (parent,) for s in desc.open_shards)
        await stream.merge_shards(*children)
        assert len((await stream.describe()).open_shards) == 1


async def test_update_shard_count_is_uniform_even_without_the_operation(
    kinesalite_endpoint: str, stream_name: str
) -> None:
    """kinesalite lacks UpdateShardCount, so this runs the split/merge path; AWS takes the call."""
    async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as stream:
        await stream.create(2)
        await stream.update_shard_count(3)
        shards = sorted((await stream.describe()).open_shards, key=lambda s: s.starting_hash_key)
        step = 2**128 // 3
        assert [s.starting_hash_key for s in shards] == [0, step, 2 * step]
        assert shards[-1].ending_hash_key == 2**128 - 1
        await stream.update_shard_count(1)
        assert len((await stream.describe()).open_shards) == 1


async def test_partial_failure_resends_only_failed_records_in_key_order(
    proxy: KinesisFaultProxy, stream_name: str
) -> None:
    async with KinesisStream.from_uri(uri(stream_name, proxy.endpoint)) as stream:
        await stream.create(2)
        records = [PutRecord(f"{i % 7}:{i}".encode(), f"user-{i % 7}") for i in range(300)]
        proxy.fail_records(0.3, "InternalFailure", calls=3)
        attempts = await put_until_acknowledged(stream, records)
        assert len(attempts) >= 2 and proxy.failed_records > 0
        assert sum(len(a) for a in attempts[1:]) == proxy.failed_records, "only failed records resent"
        for retry in attempts[1:]:
            assert retry == sorted(retry), "a retry keeps the records' original order"
        sent = [r.data for r in proxy.put_log]
        assert sorted(sent) == sorted(r.data for r in records), "nothing lost, nothing twice"
        stored = await read_all(stream)
        assert sorted(r.data for r in stored) == sorted(r.data for r in records)


async def test_throttling_storm_slows_the_sender_and_loses_nothing(
    proxy: KinesisFaultProxy, stream_name: str
) -> None:
    limits = "shard_write_records=2000&shard_write_bytes=off&limits=on&idle_wait=0"
    async with KinesisStream.from_uri(uri(stream_name, proxy.endpoint, limits)) as stream:
        await stream.create(1)
        shard = (await stream.describe()).shards[0].shard_id
        await stream.put_records([PutRecord(b"warm", "k")])
        full = stream._writes.rate(shard)
        proxy.throttle_next(3)
        proxy.fail_records(0.5, calls=4)
        records = [PutRecord(f"r{i}".encode(), f"k{i}") for i in range(200)]
        await put_until_acknowledged(stream, records)
        slowed = stream._writes.rate(shard)
        assert full is not None and slowed is not None and slowed < full * 0.8, "throttles cut the rate"
        assert sorted(r.data for r in proxy.put_log) == sorted([b"warm"] + [r.data for r in records])


async def test_stream_disappears_and_comes_back(
    proxy: KinesisFaultProxy, kinesalite_endpoint: str, stream_name: str
) -> None:
    async with KinesisStream.from_uri(uri(stream_name, proxy.endpoint)) as stream:
        await stream.create(1)
        await stream.put_records([PutRecord(b"one", "k")])
        proxy.not_found = True
        with pytest.raises(StreamNotFound, match=stream_name):
            await stream.put_records([PutRecord(b"two", "k")])
        proxy.not_found = False
        async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as direct:
            client = await direct._get_client()
            await client.delete_stream(StreamName=stream_name)
            with pytest.raises(StreamNotFound):
                await direct.describe()
            await direct.create(1)
        await stream.put_records([PutRecord(b"three", "k")])
        assert [r.data for r in await read_all(stream)] == [b"three"]


async def test_expired_iterator_and_read_pacing(proxy: KinesisFaultProxy, stream_name: str) -> None:
    async with KinesisStream.from_uri(
        uri(stream_name, proxy.endpoint, "shard_read_calls=5&idle_wait=0")
    ) as stream:
        await stream.create(1)
        shard = (await stream.describe()).shards[0].shard_id
        it = await stream.get_shard_iterator(shard, IteratorType.TRIM_HORIZON)
        proxy.error_next(1, "ExpiredIteratorException", targets=["GetRecords"])
        with pytest.raises(ExpiredIterator):
            await stream.get_records(it)
        it = await stream.get_shard_iterator(shard, IteratorType.TRIM_HORIZON)
        proxy.throttle_next(1, targets=["GetRecords"])
        with pytest.raises(Throttled):
            await stream.get_records(it)
        throttled_at = time.monotonic()
        got = await stream.get_records(it)
        assert time.monotonic() - throttled_at >= 0.95, "a read throttle pauses the shard for a second"
        it = got.next_iterator or it
        started = time.monotonic()
        for _ in range(6):
            got = await stream.get_records(it)
            assert got.next_iterator is not None
            it = got.next_iterator
        assert time.monotonic() - started >= 5 * 0.2 * 0.95, "at most 5 GetRecords calls/s per shard"


async def test_write_buckets_pace_puts_per_shard(kinesalite_endpoint: str, stream_name: str) -> None:
    limits = "limits=off&shard_write_records=500"
    async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint, limits)) as stream:
        await stream.create(1)
        started = time.monotonic()
        for batch in range(3):
            await stream.put_records([PutRecord(b"x", f"k{batch}-{i}") for i in range(500)])
        # 500 records of burst, then 1,000 more at 500/s
        assert time.monotonic() - started >= 1.9


async def test_put_cancelled_while_paced_gives_its_tokens_back(
    kinesalite_endpoint: str, stream_name: str
) -> None:
    """The flusher times out a put still waiting on its bucket and retries it: the cancelled
    reservations must not pile up as debt (they did, and the front end ended up sending almost
    nothing with kinesalite idle)."""
    limits = "limits=off&shard_write_records=500"
    async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint, limits)) as stream:
        await stream.create(1)
        await stream.put_records([PutRecord(b"x", f"burst-{i}") for i in range(500)])
        batch = [PutRecord(b"x", f"k-{i}") for i in range(500)]
        for _ in range(5):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await stream.put_records(batch)
                raise AssertionError("a put of 500 records after the burst must wait about 1 s")
        started = time.monotonic()
        await stream.put_records(batch)
        # one second of refill for this batch; the five cancelled ones would add five more
        assert time.monotonic() - started < 3.0


def test_bucket_cuts_once_per_burst_of_throttles_and_recovers() -> None:
    from processor.streams.ratelimit import TokenBucket

    bucket = TokenBucket(1000.0, cut_interval=0.2, recovery_per_second=2.0)
    for _ in range(8):
        bucket.throttled()
    assert bucket.rate == pytest.approx(500.0, rel=0.01), "calls in flight together are one overload"

    def recovered() -> bool:
        bucket.delay(0)
        return bucket.rate == 1000.0

    wait_until(recovered, timeout=5, what="the rate climbs back to the limit")
