"""`Consumer.stop()` called twice at once (a shielded stop, then an exit stack's `__aexit__`):
neither returns before the shards have committed and released, so the caller may close the
warehouse and the stream behind it. Embedded stream and SQLite warehouse, both real."""

from __future__ import annotations

import asyncio
from pathlib import Path

from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks.sqlite import SqliteWarehouse
from tests.consumer.support import fast_config
from tests.support.wait import eventually


async def test_a_second_stop_waits_for_the_first(tmp_path: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    warehouse = SqliteWarehouse.from_uri(f"sqlite:///{tmp_path}/warehouse.db")
    await stream.create(2)
    await warehouse.start()
    try:
        consumer = Consumer(fast_config(), stream, warehouse)
        await consumer.start()

        async def holding() -> list[str] | None:
            return consumer.held_shards if len(consumer.held_shards) == 2 else None

        await eventually(holding, timeout=20, what="both shards leased")
        first = asyncio.create_task(consumer.stop())
        await asyncio.sleep(0)  # the first stop is under way
        await consumer.stop()
        assert consumer.held_shards == []
        leases = await warehouse.list_leases(stream.name)
        assert all(lease.owner is None for lease in leases), "released before the second stop returned"
        await first
    finally:
        await warehouse.close()
        await stream.close()
