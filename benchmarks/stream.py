"""Records/s put and read through `KinesisStream` against kinesalite, beside async-kinesis and a naive put.

    python -m benchmarks.stream [--quick]

Prints four JSON lines: `stream_put` (peers `async_kinesis` and `naive`: one PutRecord per
event), `stream_read`, `stream_put_aggregated` and `stream_read_aggregated` (peer:
async-kinesis with its KPL processor). Every contender produces or consumes the same JSON events
(about 200 bytes, encoded or decoded inside the timed loop) against the same kinesalite, in
interleaved rounds (median of 3), each on a fresh 4-shard stream. shardflow puts in batches of
`stream.max_put_records`, as the flusher does: 500 plain, 1,000 aggregated. The aggregated pair
runs on 150,000 events (20,000 for the plain pair): at 100,000 events/s and more a shorter
round lasts a fraction of a second and machine noise swamps the ratio (with 50,000 events the
put ratio swung 1.44-2.29 between runs).

Client-side limits are lifted on both sides since the emulator never throttles: shardflow with
`limits=off`; async-kinesis with `put_rate_limit_per_shard` and `put_bandwidth_limit_per_shard`
set to 10^9 and `buffer_time` 0.01 s (its consumer's 0.2 s sleep between fetch rounds and one
GetRecords per shard per round are hard-coded, so `shard_fetch_rate` 1000 and
`sleep_time_no_records` 0.01 is as far as it goes).

`limit` is the ceiling for each figure measured in the same run: for plain puts and reads, raw
PutRecords/GetRecords calls with pre-built bodies over aiohttp (no SDK, no per-record work), i.e.
what kinesalite itself can take; for aggregated ones, where the server carries only a handful of
records, the CPU cost of KPL packing (or unpacking) and JSON alone, with no network. The
aggregated put also reports `server_ceiling`: the same aggregated records shardflow sends, in
pre-built PutRecords bodies posted over aiohttp (what kinesalite can take of them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiobotocore.session import get_session

from benchmarks.common import emit, error_line, figure, interleaved_async, kinesalite_server
from processor.streams.base import MAX_RECORD_BYTES, IteratorType, PutRecord, hash_key
from processor.streams.kinesis import AGGREGATED_PUT_RECORDS, KinesisStream
from processor.streams.kpl import deaggregate, pack

SHARDS = 4
IN_FLIGHT = 8
ROUNDS = 3
AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


def make_events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.UUID(int=i + 1)),
            "type": "page",
            "url": f"https://shop.example.com/products/{i % 977}?utm_source=news",
            "anonymous_id": f"anon-{i % 5000}",
            "ts": 1_700_000_000_000 + i,
            "properties": {"price": i % 100, "currency": "EUR"},
        }
        for i in range(n)
    ]


def peak_rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Bench:
    def __init__(self, endpoint: str, n: int, naive_n: int, aggregated_n: int) -> None:
        self.endpoint = endpoint
        self.events = make_events(n)
        self.aggregated_events = make_events(aggregated_n)
        self.naive_events = self.events[:naive_n]
        self.read_plain = ""
        self.read_aggregated = ""
        self._admin: Any = None

    def uri(self, name: str) -> str:
        return f"kinesis://{name}?region=us-east-1&endpoint={self.endpoint}&limits=off&idle_wait=0"

    async def new_stream(self) -> str:
        """A fresh 4-shard stream, made through one long-lived client (creation is not timed)."""
        name = f"bench-{uuid.uuid4().hex[:10]}"
        if self._admin is None:
            self._admin = (
                await get_session()
                .create_client("kinesis", region_name="us-east-1", endpoint_url=self.endpoint)
                .__aenter__()
            )
        await self._admin.create_stream(StreamName=name, ShardCount=SHARDS)
        while True:
            summary = await self._admin.describe_stream_summary(StreamName=name)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                return name
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.__aexit__(None, None, None)
            self._admin = None

    # --- puts ---------------------------------------------------------------------------------

    async def shardflow_put(self, *, aggregate: bool = False, keep: str = "") -> float:
        name = await self.new_stream()
        events = self.aggregated_events if aggregate else self.events
        async with KinesisStream.from_uri(self.uri(name), aggregate=aggregate) as stream:
            await stream.describe()
            started = time.perf_counter()
            batch = stream.max_put_records
            queue = [events[i : i + batch] for i in range(0, len(events), batch)]

            async def worker() -> None:
                while queue:
                    chunk = queue.pop(0)
                    records = [PutRecord(orjson.dumps(e), e["anonymous_id"]) for e in chunk]
                    results = await stream.put_records(records)
                    assert all(r.ok for r in results)

            async with asyncio.TaskGroup() as tg:
                for _ in range(IN_FLIGHT):
                    tg.create_task(worker())
            elapsed = time.perf_counter() - started
        if keep:
            setattr(self, keep, name)
        return len(events) / elapsed

    async def async_kinesis_put(self, *, aggregate: bool = False) -> float:
        from kinesis import Producer
        from kinesis.processors import JsonProcessor, KPLJsonProcessor

        name = await self.new_stream()
        events = self.aggregated_events if aggregate else self.events
        processor = KPLJsonProcessor() if aggregate else JsonProcessor()
        producer = Producer(
            stream_name=name,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            processor=processor,
            put_rate_limit_per_shard=10**9,
            put_bandwidth_limit_per_shard=10**9,
            buffer_time=0.01,
            batch_size=500,
            max_queue_size=len(events) + 1,
        )
        async with producer:
            started = time.perf_counter()
            for e in events:
                # its KPL processor refuses custom partition keys (it makes its own)
                await producer.put(e) if aggregate else await producer.put(e, partition_key=e["anonymous_id"])
            await producer.flush()
        elapsed = time.perf_counter() - started
        return len(events) / elapsed

    async def naive_put(self) -> float:
        name = await self.new_stream()
        async with get_session().create_client(
            "kinesis", region_name="us-east-1", endpoint_url=self.endpoint
        ) as client:
            started = time.perf_counter()
            for e in self.naive_events:
                await client.put_record(StreamName=name, Data=orjson.dumps(e), PartitionKey=e["anonymous_id"])
            elapsed = time.perf_counter() - started
        return len(self.naive_events) / elapsed

    async def raw_put(self) -> float:
        """Ceiling: pre-built PutRecords bodies posted over aiohttp, IN_FLIGHT at a time."""
        name = await self.new_stream()
        bodies = [
            orjson.dumps(
                {
                    "StreamName": name,
                    "Records": [
                        {
                            "Data": base64.b64encode(orjson.dumps(e)).decode(),
                            "PartitionKey": e["anonymous_id"],
                        }
                        for e in self.events[i : i + 500]
                    ],
                }
            )
            for i in range(0, len(self.events), 500)
        ]
        return len(self.events) / await self._post_puts(bodies)

    # --- reads --------------------------------------------------------------------------------

    async def shardflow_read(self, name: str, count: int) -> float:
        async with KinesisStream.from_uri(self.uri(name)) as stream:
            started = time.perf_counter()
            shards = (await stream.describe()).shards
            total = 0

            async def shard_reader(shard_id: str) -> None:
                nonlocal total
                it: str | None = await stream.get_shard_iterator(shard_id, IteratorType.TRIM_HORIZON)
                while it is not None:
                    got = await stream.get_records(it)
                    for r in got.records:
                        orjson.loads(r.data)
                    total += len(got.records)
                    it = got.next_iterator
                    if not got.records and got.millis_behind_latest == 0:
                        return

            async with asyncio.TaskGroup() as tg:
                for s in shards:
                    tg.create_task(shard_reader(s.shard_id))
            elapsed = time.perf_counter() - started
        assert total == count, (total, count)
        return count / elapsed

    async def async_kinesis_read(self, name: str, count: int, *, aggregate: bool = False) -> float:
        from kinesis import Consumer
        from kinesis.processors import JsonProcessor, KPLJsonProcessor

        consumer = Consumer(
            stream_name=name,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            processor=KPLJsonProcessor() if aggregate else JsonProcessor(),
            iterator_type="TRIM_HORIZON",
            shard_fetch_rate=1000,
            sleep_time_no_records=0.01,
            max_queue_size=count + 1,
            idle_timeout=5.0,
        )
        seen = 0
        started = time.perf_counter()
        async with consumer:
            async for _ in consumer:
                seen += 1
                if seen == count:
                    break
        elapsed = time.perf_counter() - started
        assert seen == count, (seen, count)
        return count / elapsed

    async def raw_read(self, name: str, count: int) -> float:
        """Ceiling: GetRecords over aiohttp with orjson, no SDK and no per-record decoding."""
        async with aiohttp.ClientSession() as http:

            async def call(target: str, body: dict[str, Any]) -> dict[str, Any]:
                async with http.post(self.endpoint, data=orjson.dumps(body), headers=_headers(target)) as a:
                    assert a.status == 200, await a.text()
                    result: dict[str, Any] = orjson.loads(await a.read())
                    return result

            started = time.perf_counter()
            shards = (await call("ListShards", {"StreamName": name}))["Shards"]
            total = 0

            async def shard_reader(shard_id: str) -> None:
                nonlocal total
                it = (
                    await call(
                        "GetShardIterator",
                        {"StreamName": name, "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"},
                    )
                )["ShardIterator"]
                while it:
                    got = await call("GetRecords", {"ShardIterator": it, "Limit": 10000})
                    total += len(got["Records"])
                    it = got.get("NextShardIterator")
                    if not got["Records"] and got.get("MillisBehindLatest", 0) == 0:
                        return

            async with asyncio.TaskGroup() as tg:
                for s in shards:
                    tg.create_task(shard_reader(s["ShardId"]))
            elapsed = time.perf_counter() - started
        assert total == count, (total, count)
        return count / elapsed

    # --- CPU ceilings for aggregation ---------------------------------------------------------

    async def pack_only(self) -> float:
        started = time.perf_counter()
        for call in _by_shard(self.aggregated_events, AGGREGATED_PUT_RECORDS):
            for keys, datas in call:
                pack(keys, datas, MAX_RECORD_BYTES)
        return len(self.aggregated_events) / (time.perf_counter() - started)

    async def raw_put_aggregated(self) -> float:
        """Server ceiling: the aggregated records shardflow sends, pre-built into PutRecords
        bodies and posted over aiohttp, IN_FLIGHT at a time (what kinesalite itself can take)."""
        name = await self.new_stream()
        bodies: list[bytes] = []
        for call in _by_shard(self.aggregated_events, AGGREGATED_PUT_RECORDS):
            records = []
            for keys, datas in call:
                first = 0
                for blob, count in pack(keys, datas, MAX_RECORD_BYTES):
                    assert blob is not None
                    key = keys[first]
                    records.append(
                        {
                            "Data": base64.b64encode(blob).decode(),
                            "PartitionKey": key,
                            "ExplicitHashKey": str(hash_key(key)),
                        }
                    )
                    first += count
            bodies.append(orjson.dumps({"StreamName": name, "Records": records}))
        return len(self.aggregated_events) / await self._post_puts(bodies)

    async def _post_puts(self, bodies: list[bytes]) -> float:
        """Seconds to post the pre-built PutRecords `bodies`, IN_FLIGHT at a time, in order."""
        queue = deque(bodies)
        headers = _headers("PutRecords")
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()

            async def worker() -> None:
                while queue:
                    body = queue.popleft()
                    async with http.post(self.endpoint, data=body, headers=headers) as answer:
                        assert answer.status == 200, await answer.text()
                        await answer.read()

            async with asyncio.TaskGroup() as tg:
                for _ in range(IN_FLIGHT):
                    tg.create_task(worker())
            return time.perf_counter() - started

    async def unpack_only(self) -> float:
        blobs = [
            blob
            for call in _by_shard(self.aggregated_events, AGGREGATED_PUT_RECORDS)
            for keys, datas in call
            for blob, _ in pack(keys, datas, MAX_RECORD_BYTES)
            if blob is not None
        ]
        started = time.perf_counter()
        for blob in blobs:
            for sub in deaggregate(blob) or ():
                orjson.loads(sub.data)
        return len(self.aggregated_events) / (time.perf_counter() - started)


def _by_shard(events: list[dict[str, Any]], batch: int) -> list[list[tuple[list[str], list[bytes]]]]:
    """Per call of `batch` events, per shard of a uniform SHARDS-shard stream, the partition keys
    and JSON of its events, as `KinesisStream` groups them before packing."""
    calls: list[list[tuple[list[str], list[bytes]]]] = []
    for start in range(0, len(events), batch):
        groups: list[tuple[list[str], list[bytes]]] = [([], []) for _ in range(SHARDS)]
        for e in events[start : start + batch]:
            keys, datas = groups[hash_key(e["anonymous_id"]) * SHARDS >> 128]
            keys.append(e["anonymous_id"])
            datas.append(orjson.dumps(e))
        calls.append([g for g in groups if g[0]])
    return calls


def _headers(target: str) -> dict[str, str]:
    return {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"Kinesis_20131202.{target}",
        "Authorization": AUTH,
        "X-Amz-Date": "20260101T000000Z",
    }


async def run(quick: bool) -> None:
    n, naive_n, aggregated_n = (3000, 150, 3000) if quick else (20000, 600, 150000)
    logging.getLogger("kinesis").setLevel(logging.ERROR)
    with kinesalite_server() as (endpoint, _):
        bench = Bench(endpoint, n, naive_n, aggregated_n)
        common = {"events": n, "shards": SHARDS, "in_flight": IN_FLIGHT, "rounds": ROUNDS}
        aggregated = {**common, "events": aggregated_n}
        lifted = {
            "async_kinesis_limits": "put_rate_limit_per_shard=1e9, put_bandwidth_limit_per_shard=1e9, "
            "buffer_time=0.01, batch_size=500; consumer shard_fetch_rate=1000, sleep_time_no_records=0.01 "
            "(its 0.2 s sleep per fetch round is fixed)",
            "shardflow_limits": "limits=off",
        }

        async def line(
            name: str, contenders: dict[str, Callable[[], Awaitable[float]]], **extra: Any
        ) -> None:
            try:
                got = await interleaved_async(contenders, ROUNDS)
            except Exception as exc:
                emit(error_line(name, f"{type(exc).__name__}: {exc}"))
                return
            if "server_ceiling" in got:
                extra = {"server_ceiling": round(got["server_ceiling"], 1), **extra}
            peers = {k: v for k, v in got.items() if k not in {"shardflow", "limit", "server_ceiling"}}
            emit(figure(name, got["shardflow"], got["limit"], peers=peers, rss_mb=peak_rss_mb(), **extra))

        await line(
            "stream_put",
            {
                "shardflow": lambda: bench.shardflow_put(keep="read_plain"),
                "async_kinesis": bench.async_kinesis_put,
                "naive": bench.naive_put,
                "limit": bench.raw_put,
            },
            **common,
            naive_events=naive_n,
            limit_basis="raw PutRecords over aiohttp, pre-built bodies",
            **lifted,
        )
        await line(
            "stream_read",
            {
                "shardflow": lambda: bench.shardflow_read(bench.read_plain, n),
                "async_kinesis": lambda: bench.async_kinesis_read(bench.read_plain, n),
                "limit": lambda: bench.raw_read(bench.read_plain, n),
            },
            **common,
            limit_basis="raw GetRecords over aiohttp, no per-record decoding",
            **lifted,
        )
        await line(
            "stream_put_aggregated",
            {
                "shardflow": lambda: bench.shardflow_put(aggregate=True, keep="read_aggregated"),
                "async_kinesis": lambda: bench.async_kinesis_put(aggregate=True),
                "limit": bench.pack_only,
                "server_ceiling": bench.raw_put_aggregated,
            },
            **aggregated,
            shardflow_batch=AGGREGATED_PUT_RECORDS,
            limit_basis="KPL packing and JSON encoding alone, no network",
            server_ceiling_basis="raw PutRecords, same aggregated records, pre-built bodies over aiohttp",
            **lifted,
        )
        await line(
            "stream_read_aggregated",
            {
                "shardflow": lambda: bench.shardflow_read(bench.read_aggregated, aggregated_n),
                "async_kinesis": lambda: bench.async_kinesis_read(
                    bench.read_aggregated, aggregated_n, aggregate=True
                ),
                "limit": bench.unpack_only,
            },
            **aggregated,
            limit_basis="KPL unpacking and JSON decoding alone, no network",
            **lifted,
        )
        await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (a CI smoke run)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.quick))


if __name__ == "__main__":
    main()
