"""Consumers over the loopback Kinesis server (kinesalite): same code, a real Kinesis API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.streams.kinesis import KinesisStream
from shard_consumer.consumer import Consumer
from sinks import open_warehouse
from tests.consumer.support import event_records, fast_config, put_all, row_counts
from tests.support.kinesalite import kinesalite
from tests.support.wait import eventually


@pytest.fixture(scope="module")
def kinesis_endpoint() -> Iterator[str]:
    with kinesalite() as endpoint:
        yield endpoint


@pytest.mark.slow
async def test_two_consumers_over_kinesis_through_split_and_merge(
    kinesis_endpoint: str, tmp_path: Path
) -> None:
    name = f"c-{uuid.uuid4().hex[:10]}"
    stream = KinesisStream.from_uri(f"kinesis://{name}?region=us-east-1&endpoint={kinesis_endpoint}")
    warehouse = open_warehouse(f"sqlite:///{tmp_path}/warehouse.db")
    await stream.create(4)
    await warehouse.start()
    total = 6000
    records = event_records(total, "kin")
    config = fast_config(idle_poll_interval=0.2)
    first = Consumer(config, stream, warehouse)
    second = Consumer(config, stream, warehouse)
    try:
        await first.start()
        await second.start()
        await put_all(stream, records[:3000])

        async def some() -> bool:
            return (await row_counts(warehouse))[0] > 500

        await eventually(some, timeout=30, what="rows from kinesis")
        shards = sorted(s.shard_id for s in (await stream.describe()).open_shards)
        await stream.split_shard(shards[0])
        await _active(stream)
        await stream.merge_shards(shards[2], shards[3])
        await _active(stream)
        await put_all(stream, records[3000:])

        async def loaded() -> bool:
            return await row_counts(warehouse) == (total, total)

        await eventually(loaded, timeout=60, interval=0.2, what=f"{total} rows")

        async def shared() -> bool:  # loading can finish before the second consumer takes its share
            return bool(first.held_shards and second.held_shards)

        await eventually(shared, timeout=30, interval=0.2, what="both consumers got a share")
        stored = {c.shard_id: c.sequence_number for c in await warehouse.checkpoints(name)}
        assert stored[shards[0]] == stored[shards[2]] == stored[shards[3]] == "SHARD_END"
    finally:
        await first.stop()
        await second.stop()
        await warehouse.close()
        await stream.close()


async def _active(stream: KinesisStream) -> None:
    for _ in range(100):
        if (await stream.describe()).status == "ACTIVE":
            return
        await asyncio.sleep(0.05)
