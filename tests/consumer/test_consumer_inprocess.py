"""Consumers driven in-process against the embedded stream and a real SQLite warehouse."""

from __future__ import annotations

from pathlib import Path

from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks.sqlite import SqliteWarehouse
from tests.consumer.support import event_records, fast_config, put_all, row_counts
from tests.support.wait import eventually


async def test_one_consumer_loads_every_event_once(tmp_path: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    warehouse = SqliteWarehouse.from_uri(f"sqlite:///{tmp_path}/warehouse.db")
    await stream.create(4)
    await warehouse.start()
    records = event_records(3000)
    await put_all(stream, records)
    await put_all(stream, records[:100])  # producer retries: same event ids again
    try:
        async with Consumer(fast_config(), stream, warehouse) as consumer:
            await eventually(lambda: row_counts(warehouse), what="rows loaded", timeout=30)

            async def done() -> bool:
                return await row_counts(warehouse) == (3000, 3000)

            await eventually(done, what="3000 rows", timeout=30)
            assert consumer.held_shards == sorted(s.shard_id for s in (await stream.describe()).shards)
        leases = await warehouse.list_leases(stream.name)
        assert all(lease.owner is None for lease in leases), "stop releases every lease"
    finally:
        await warehouse.close()
        await stream.close()
