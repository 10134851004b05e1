"""The work on one leased shard: wait for parents, read, enrich on the pool, commit in order.

`ShardConsumer.run()` walks the states of `shard_consumer.states` and returns the transition
that ended it. The caller (the `Consumer`) releases the lease after SHARD_END or a requested
shutdown, and only drops it after a lost lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from processor.errors import LeaseLost, WarehouseUnavailable
from processor.metrics import CONSUMER_RECORDS
from processor.streams.base import SHARD_END, Stream
from shard_consumer.committer import PendingBatch, ShardCommitter
from shard_consumer.config import ConsumerConfig
from shard_consumer.leases import workable
from shard_consumer.pool import WorkerPool
from shard_consumer.reader import ReadBatch, ShardReader
from shard_consumer.states import ShardState, Transition, check_transition
from sinks.base import Fence, Lease, Warehouse

__all__ = ["ShardConsumer"]

log = logging.getLogger(__name__)

_MAX_RETRY = 5.0

T = TypeVar("T")


class ShardConsumer:
    """One shard under one lease. Run `run()` as a task; `request_shutdown()` ends it gracefully."""

    def __init__(
        self,
        lease: Lease,
        *,
        consumer_id: str,
        stream: Stream,
        warehouse: Warehouse,
        pool: WorkerPool,
        config: ConsumerConfig,
        on_warehouse: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.lease = lease
        self.shard_id = lease.shard_id
        self.fence = Fence(consumer_id, lease.lease_counter)
        self._stream = stream
        self._warehouse = warehouse
        self._pool = pool
        self._config = config
        self._on_warehouse = on_warehouse
        self._shutdown = asyncio.Event()
        self.state = ShardState.WAITING_ON_PARENTS
        self.committed: str | None = None

    def _move(self, transition: Transition) -> None:
        new = check_transition(self.state, transition)
        log.debug("shard %s: %s -(%s)-> %s", self.shard_id, self.state.value, transition.value, new.value)
        self.state = new

    def request_shutdown(self) -> None:
        """Stop reading, commit what is in flight, then let `run()` return SHUTDOWN_REQUESTED."""
        self._shutdown.set()

    def lease_lost(self) -> None:
        """Record that the lease is gone; the caller cancels the task (nothing is checkpointed)."""
        if self.state is not ShardState.DONE:
            self._move(Transition.LEASE_LOST)

    async def run(self) -> Transition:
        """Process the shard until its end, a requested shutdown, or a lost lease.

        Returns SHARD_END (checkpointed) or SHUTDOWN_REQUESTED (in-flight work committed); on a
        refused commit returns LEASE_LOST with nothing of the refused batch written.
        """
        try:
            ending = await self._run()
        except LeaseLost:
            return self._dropped()
        except BaseExceptionGroup as group:
            if group.subgroup(LeaseLost) is None:
                raise
            return self._dropped()
        if self.state is not ShardState.SHUTTING_DOWN:
            self._move(ending)
        self._move(Transition.FINISHED)
        return ending

    def _dropped(self) -> Transition:
        log.warning("shard %s: lease lost; dropping the shard uncommitted", self.shard_id)
        self.lease_lost()
        return Transition.LEASE_LOST

    async def _run(self) -> Transition:
        if not await self._wait_for_parents():
            return Transition.SHUTDOWN_REQUESTED
        self._move(Transition.PARENTS_DONE)
        checkpoint = await self._retrying(
            lambda: self._warehouse.get_checkpoint(self._stream.name, self.shard_id)
        )
        if checkpoint == SHARD_END:
            return Transition.SHARD_END
        if self._shutdown.is_set():
            return Transition.SHUTDOWN_REQUESTED
        config = self._config
        reader = ShardReader(
            self._stream,
            self.shard_id,
            checkpoint=checkpoint,
            # children always start at their beginning: the parents held everything before.
            initial_position="TRIM_HORIZON" if self.lease.parent_shard_ids else config.initial_position,
            initial_timestamp=config.initial_timestamp,
            batch_records=config.batch_records,
            idle_poll_interval=config.idle_poll_interval,
        )
        committer = ShardCommitter(
            self._warehouse,
            self._stream.name,
            self.shard_id,
            self.fence,
            max_in_flight=config.max_batches_in_flight,
            max_rows=config.max_commit_rows,
            on_warehouse=self._on_warehouse,
        )
        self._move(Transition.INITIALIZED)
        async with asyncio.TaskGroup() as tg:
            commits = tg.create_task(committer.run())
            ending = await self._read_loop(reader, committer, tg)
            if ending is Transition.SHUTDOWN_REQUESTED:
                self._move(ending)
            await commits
        self.committed = committer.committed
        return ending

    async def _read_loop(
        self, reader: ShardReader, committer: ShardCommitter, tg: asyncio.TaskGroup
    ) -> Transition:
        records_read = CONSUMER_RECORDS.labels(self.shard_id)
        stop = asyncio.ensure_future(self._shutdown.wait())
        read: asyncio.Future[ReadBatch] | None = None
        try:
            while True:
                read = asyncio.ensure_future(reader.read())
                await asyncio.wait((read, stop), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    await asyncio.gather(read, return_exceptions=True)
                    await committer.finish()
                    return Transition.SHUTDOWN_REQUESTED
                batch = read.result()
                records_read.inc(len(batch.records))
                processed = tg.create_task(self._pool.process(self.shard_id, batch.records))
                checkpoint = SHARD_END if batch.shard_end else batch.records[-1].sequence_number
                await committer.put(PendingBatch(processed, checkpoint, len(batch.records)))
                if batch.shard_end:
                    await committer.finish()
                    return Transition.SHARD_END
        finally:
            stop.cancel()
            if read is not None and not read.done():
                # cancelled from outside (lease lost, shutdown deadline): a read left running
                # would poll an idle shard forever and report lag for a shard no longer ours
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)

    async def _wait_for_parents(self) -> bool:
        """True once every parent is at SHARD_END (or gone from the stream); False on shutdown."""
        parents = self.lease.parent_shard_ids
        if not parents:
            return True
        delay = self._config.idle_poll_interval
        while not self._shutdown.is_set():
            checkpoints = [
                await self._retrying(partial(self._warehouse.get_checkpoint, self._stream.name, parent))
                for parent in parents
            ]
            if all(c == SHARD_END for c in checkpoints):
                return True
            leases = await self._retrying(lambda: self._warehouse.list_leases(self._stream.name))
            if any(lease.shard_id == self.shard_id for lease in workable(leases)):
                return True
            try:
                await asyncio.wait_for(self._shutdown.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, _MAX_RETRY)
        return False

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` retried with capped back-off while the warehouse is unreachable."""
        delay = 0.1
        while True:
            try:
                result = await call()
            except WarehouseUnavailable as exc:
                self._on_warehouse(False)
                log.warning("shard %s: warehouse unavailable (%s); retry in %.1fs", self.shard_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            self._on_warehouse(True)
            return result
