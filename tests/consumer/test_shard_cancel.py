"""A shard consumer cancelled (lease lost, shutdown deadline) leaves no reader polling behind.

Real embedded stream and real SQLite warehouse; the shard is idle, so a reader left running
would poll GetRecords forever and keep reporting lag for a shard this process no longer reads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from processor.streams.embedded import EmbeddedStream
from shard_consumer.pool import WorkerPool
from shard_consumer.reader import ShardReader
from shard_consumer.shard import ShardConsumer
from sinks import open_warehouse
from tests.consumer.support import fast_config
from tests.support.wait import eventually


def _reading_tasks() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == ShardReader.read.__qualname__
    ]


async def _polling() -> list[asyncio.Task[object]] | None:
    return _reading_tasks() or None


async def test_a_cancelled_shard_leaves_no_reader_running(tmp_path: Path, sqlite_url: str) -> None:
    stream = EmbeddedStream(tmp_path / "stream.db")
    await stream.create(1)
    warehouse = open_warehouse(sqlite_url)
    await warehouse.start()
    try:
        shard_id = (await stream.describe()).shards[0].shard_id
        await warehouse.create_leases(stream.name, (await stream.describe()).shards)
        lease = await warehouse.take_lease(stream.name, shard_id, "me", 0, 60)
        assert lease is not None
        async with WorkerPool(1) as pool:
            shard = ShardConsumer(
                lease, consumer_id="me", stream=stream, warehouse=warehouse, pool=pool, config=fast_config()
            )
            task = asyncio.create_task(shard.run())
            await eventually(_polling, timeout=10, what="the reader polling")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert _reading_tasks() == []
    finally:
        await warehouse.close()
        await stream.close()
