"""SQLite warehouse: lease calls do not wait behind the queue of batch writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sinks import Batch, Fence
from sinks.sqlite import SqliteWarehouse
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARDS, STREAM

WRITES, ROWS = 12, 3000


async def test_a_renewal_overtakes_queued_batch_writes(tmp_path: Path) -> None:
    wh = SqliteWarehouse(tmp_path / "warehouse.db")
    await wh.start()
    try:
        await wh.create_leases(STREAM, SHARDS)
        shard = SHARDS[0].shard_id
        lease = next(le for le in await wh.list_leases(STREAM) if le.shard_id == shard)
        taken = await wh.take_lease(STREAM, shard, "me", lease.lease_counter, 60)
        assert taken is not None
        fence = Fence("me", taken.lease_counter)
        done: list[int] = []

        async def write(b: int) -> None:
            rows = [make_row(b * ROWS + i, shard_id=shard) for i in range(ROWS)]
            await wh.write_batch(Batch(STREAM, shard, rows, [], str(b), fence))
            done.append(b)

        writes = [asyncio.create_task(write(b)) for b in range(WRITES)]
        await asyncio.sleep(0)  # every write is queued on the writer thread
        renewed = await wh.renew_leases(STREAM, "me", {shard: taken.lease_counter}, 60)
        finished_before_renewal = len(done)
        await asyncio.gather(*writes)

        assert set(renewed) == {shard}
        # The renewal went ahead of the queued writes: it did not wait for the whole queue.
        assert finished_before_renewal < WRITES
        result = await wh.query("SELECT count(*) FROM page_views")
        assert result.rows == [(WRITES * ROWS,)]
    finally:
        await wh.close()
