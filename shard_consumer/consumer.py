"""A consumer process's share of a stream: leases, one `ShardConsumer` per leased shard, the pool.

Start any number of consumers, in one process or many machines, on the same stream and
warehouse: they split the shards fairly through the lease table, hand shards over gracefully
when one joins or stops, and never commit a batch without holding its shard's lease.

Shutdown order (`stop()`): take no new leases -> every shard stops reading, commits its in-flight
batches and releases its lease (leases keep being renewed meanwhile) -> whatever did not finish
within `shutdown_timeout` is cancelled uncommitted and released -> the worker pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from processor import gc_tuning
from processor.errors import FatalError, RetriableError, WarehouseUnavailable
from processor.metrics import CONSUMER_MILLIS_BEHIND, WAREHOUSE_UP
from processor.streams.base import Stream
from shard_consumer.config import ConsumerConfig
from shard_consumer.leases import LeaseManager, new_consumer_id
from shard_consumer.pool import WorkerPool
from shard_consumer.shard import ShardConsumer
from shard_consumer.states import ShardState, Transition
from sinks.base import Lease, Warehouse

__all__ = ["Consumer"]

log = logging.getLogger(__name__)


class Consumer:
    """Consumes this process's fair share of `stream` into `warehouse`. `async with` or start/stop.

    The caller owns `stream` and `warehouse` (the consumer neither opens nor closes them, though
    it calls the idempotent `warehouse.start()`).
    """

    def __init__(self, config: ConsumerConfig, stream: Stream, warehouse: Warehouse) -> None:
        self.config = config
        self.consumer_id = config.consumer_id or new_consumer_id()
        self.warehouse_up = True
        self._stream = stream
        self._warehouse = warehouse
        self._leases = LeaseManager(warehouse, stream, self.consumer_id, lease_timeout=config.lease_timeout)
        self._pool = WorkerPool(config.workers, anonymize_ip=config.anonymize_ip)
        self._shards: dict[str, tuple[ShardConsumer, asyncio.Task[None]]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._stopped_event = asyncio.Event()
        self._resync = True
        self._wake = asyncio.Event()
        self._tuned_gc = False

    @property
    def renew_interval(self) -> float:
        return self.config.renew_interval or self.config.lease_timeout / 3

    @property
    def held_shards(self) -> list[str]:
        """Shards whose lease this consumer holds now, sorted."""
        return sorted(self._leases.held)

    def shard_states(self) -> dict[str, ShardState]:
        return {shard_id: shard.state for shard_id, (shard, _) in self._shards.items()}

    async def start(self) -> None:
        """Start the worker pool and the lease loop; returns before any lease is taken. Idempotent."""
        if self._loop_task is not None or self._stopped:
            return
        await self._pool.start()
        gc_tuning.busy(True)
        self._tuned_gc = True
        self._loop_task = asyncio.create_task(self._lease_loop(), name=f"leases {self.consumer_id}")

    async def stop(self) -> None:
        """Finish in-flight batches, commit, release every lease, close the pool. Idempotent;
        a call made while another is under way returns when that one has finished."""
        if self._stopped:
            return
        if self._stopping:
            await self._stopped_event.wait()
            return
        self._stopping = True
        try:
            tasks = [task for _, task in self._shards.values()]
            for shard, _ in self._shards.values():
                shard.request_shutdown()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._loop_task is not None:
                self._loop_task.cancel()
                await asyncio.gather(self._loop_task, return_exceptions=True)
            for shard_id in list(self._leases.held):
                with contextlib.suppress(RetriableError):
                    # shielded: a lease left held makes the next owner wait for expiry
                    await asyncio.shield(self._leases.release(shard_id))
        finally:
            try:
                await self._pool.close()
            finally:
                if self._tuned_gc:
                    self._tuned_gc = False
                    gc_tuning.busy(False)
                self._stopped = True
                self._stopped_event.set()

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _set_warehouse(self, up: bool) -> None:
        if up != self.warehouse_up:
            log.warning("warehouse is %s", "back" if up else "unavailable")
        self.warehouse_up = up
        WAREHOUSE_UP.set(1 if up else 0)

    async def _lease_loop(self) -> None:
        """Renew, follow hand-off requests, re-sync shards, balance; every `renew_interval`."""
        interval = self.renew_interval
        WAREHOUSE_UP.set(1)
        await self._start_warehouse(interval)
        next_sync = 0.0
        # consumers started together should not all grab every free lease at the same instant
        await asyncio.sleep(random.uniform(0, interval / 4))
        while True:
            self._wake.clear()
            try:
                await self._renew()
                if not self._stopping:
                    if self._resync or time.monotonic() >= next_sync:
                        self._resync = False
                        await self._leases.sync_shards()
                        next_sync = time.monotonic() + self.config.shard_sync_interval
                    for lease in await self._leases.balance():
                        self._start_shard(lease)
                self._set_warehouse(True)
            except WarehouseUnavailable as exc:
                self._set_warehouse(False)
                log.warning("lease loop: %s", exc)
            except (RetriableError, FatalError) as exc:
                log.warning("lease loop: %s", exc)
            except Exception:
                # a dead lease loop would let every lease lapse while the shards go on reading
                log.exception("lease loop: unexpected error; carrying on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def _start_warehouse(self, interval: float) -> None:
        while True:
            try:
                await self._warehouse.start()
            except WarehouseUnavailable as exc:
                self._set_warehouse(False)
                log.warning("warehouse unavailable at start: %s", exc)
                await asyncio.sleep(interval)
                continue
            self._set_warehouse(True)
            return

    async def _renew(self) -> None:
        result = await self._leases.renew()
        for shard_id in result.lost:
            entry = self._shards.pop(shard_id, None)
            if entry is not None:
                shard, task = entry
                log.warning("shard %s: lease lost; dropping it", shard_id)
                shard.lease_lost()
                task.cancel()
        for shard_id in result.handoffs:
            entry = self._shards.get(shard_id)
            if entry is not None:
                log.info("shard %s: hand-off requested; committing and releasing", shard_id)
                entry[0].request_shutdown()

    def _start_shard(self, lease: Lease) -> None:
        shard = ShardConsumer(
            lease,
            consumer_id=self.consumer_id,
            stream=self._stream,
            warehouse=self._warehouse,
            pool=self._pool,
            config=self.config,
            on_warehouse=self._set_warehouse,
        )
        task = asyncio.create_task(self._run_shard(shard), name=f"shard {lease.shard_id}")
        self._shards[lease.shard_id] = (shard, task)

    async def _run_shard(self, shard: ShardConsumer) -> None:
        shard_id = shard.shard_id
        try:
            ending = await shard.run()
        except Exception:
            log.exception("shard %s failed; releasing it", shard_id)
            ending = Transition.SHUTDOWN_REQUESTED
        entry = self._shards.get(shard_id)
        if entry is not None:
            if entry[0] is not shard:
                return  # taken again meanwhile: the newer task owns the lease and the metrics
            del self._shards[shard_id]
        with contextlib.suppress(KeyError):
            # a shard no longer read here has no lag to report from this process
            CONSUMER_MILLIS_BEHIND.remove(shard_id)
        counter = shard.fence.lease_counter
        if ending is Transition.LEASE_LOST:
            self._leases.drop(shard_id, counter)
            return
        try:
            await asyncio.shield(self._leases.release(shard_id, counter))
        except RetriableError as exc:
            log.warning("shard %s: release failed (%s); the lease will expire", shard_id, exc)
        if ending is Transition.SHARD_END:
            log.info("shard %s: finished (SHARD_END)", shard_id)
            self._resync = True
            self._wake.set()
