"""The worker pool: what comes back from worker processes equals the inline result."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

from processor.streams.base import Record
from shard_consumer.pool import WorkerPool, process_records
from sinks.base import PageView
from tests.consumer.support import event_records


def records(count: int) -> list[Record]:
    return [
        Record(f"{i:020d}", put.partition_key, put.data, 0.0) for i, put in enumerate(event_records(count))
    ] + [Record(f"{count:020d}", "k", b"not json", 0.0)]


async def test_process_workers_return_the_inline_rows() -> None:
    batch = records(300)
    expected = process_records("s", [r.sequence_number for r in batch], [r.data for r in batch], False)
    async with WorkerPool(2) as pool:
        got = await pool.process("s", batch)
    assert got == expected
    assert all(type(row) is PageView for row in got.rows)
    assert [d.stage for d in got.dead_letters] == ["decode"]


async def test_thread_pool_shortens_the_switch_interval_while_it_runs() -> None:
    before = sys.getswitchinterval()
    first, second = WorkerPool(1), WorkerPool(1)
    await first.start()
    await second.start()
    assert sys.getswitchinterval() <= 0.001
    await first.close()
    assert sys.getswitchinterval() <= 0.001
    await second.close()
    await second.close()
    assert sys.getswitchinterval() == before


async def test_a_worker_killed_by_the_os_is_replaced_and_the_batch_still_processed() -> None:
    """SIGKILL of a worker process (as the OOM killer does) breaks a ProcessPoolExecutor for
    good; the pool starts anew instead of failing every later batch of every shard."""
    batch = records(300)
    expected = process_records("s", [r.sequence_number for r in batch], [r.data for r in batch], False)
    async with WorkerPool(2) as pool:
        executor = pool._executor
        assert isinstance(executor, ProcessPoolExecutor)
        victim = next(iter(executor._processes.values()))
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.join, 10)
        assert await pool.process("s", batch) == expected
        assert await pool.process("s", batch) == expected
