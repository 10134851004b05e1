"""In-order commit with coalescing, against a real SQLite warehouse.

Batches whose enrichment is done when a commit starts go in one transaction (checkpoint of the
last one); a batch still being enriched is never jumped over, and nothing is written twice.
"""

from __future__ import annotations

import asyncio

from processor.streams.base import ShardInfo
from shard_consumer.committer import PendingBatch, ShardCommitter
from shard_consumer.pool import Processed, process_records
from sinks import open_warehouse
from sinks.base import Batch, Fence, Warehouse
from tests.consumer.support import event_records, row_counts
from tests.support.wait import eventually

STREAM = "s"
SHARD = "shardId-000000000000"


class Recording:
    """The real warehouse, noting each batch it is asked to commit (no fault, no fake)."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.batches: list[Batch] = []

    async def write_batch(self, batch: Batch) -> int:
        self.batches.append(batch)
        return await self.warehouse.write_batch(batch)


def processed(first: int, count: int, prefix: str = "e") -> Processed:
    records = event_records(count, prefix=prefix, start=first)
    seqs = [f"{i:020d}" for i in range(first, first + count)]
    return process_records(SHARD, seqs, [r.data for r in records], False)


async def test_ready_batches_commit_together_in_order(sqlite_url: str) -> None:
    warehouse = open_warehouse(sqlite_url)
    await warehouse.start()
    try:
        await warehouse.create_leases(STREAM, [ShardInfo(SHARD, 0, 2**128 - 1)])
        lease = await warehouse.take_lease(STREAM, SHARD, "me", 0, 60)
        assert lease is not None
        sink = Recording(warehouse)
        committer = ShardCommitter(
            sink,  # type: ignore[arg-type]
            STREAM,
            SHARD,
            Fence("me", lease.lease_counter),
            max_in_flight=8,
            max_rows=250,
        )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Processed]] = [loop.create_future() for _ in range(6)]
        for i, future in enumerate(futures):
            await committer.put(PendingBatch(future, f"{i * 100 + 99:020d}", 100))
        await committer.finish()
        # 0 and 1 done, 2 lags behind 3..5: commits are [0, 1], then [2, 3] (250-row cap), then [4, 5]
        futures[0].set_result(processed(0, 100))
        futures[1].set_result(processed(100, 100))
        futures[3].set_result(processed(300, 100))
        futures[4].set_result(processed(400, 100))
        # a producer retry of an event of batch 4 arrives again in batch 5: one row in the merge
        again = processed(500, 100)
        futures[5].set_result(Processed([*again.rows, processed(450, 1).rows[0]], again.dead_letters))
        run = asyncio.create_task(committer.run())

        async def first_commit() -> bool:
            return committer.committed is not None

        await eventually(first_commit, timeout=10, what="the first commit")
        for _ in range(20):
            await asyncio.sleep(0)  # batch 2 is still being enriched: nothing may pass it
        assert [b.checkpoint for b in sink.batches] == [f"{199:020d}"]
        assert await warehouse.get_checkpoint(STREAM, SHARD) == f"{199:020d}"
        futures[2].set_result(processed(200, 100))
        await asyncio.wait_for(run, 10)

        assert [b.checkpoint for b in sink.batches] == [f"{i:020d}" for i in (199, 399, 599)]
        assert [len(b.rows) for b in sink.batches] == [200, 200, 200]
        assert committer.committed == f"{599:020d}"
        assert await warehouse.get_checkpoint(STREAM, SHARD) == f"{599:020d}"
        assert await row_counts(warehouse) == (600, 600)
    finally:
        await warehouse.close()
