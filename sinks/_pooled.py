"""The shape both server warehouses share: two pools, an idempotent lifecycle, lease races.

PostgreSQL and MySQL/MariaDB differ in driver, SQL and error codes, not in how they live: a
write pool and a lease pool of their own (a stuck load never delays a renewal), made lazily so a
warehouse down at start is retried on first use; `start()` migrates under the server's own lock;
`close()` waits for the pools a bounded time, then forces them; a batch the server refuses as
it is gets one more try in the form the backend says (`WriteAgain`); a lease change that meets a
row lock past the lock timeout is a lost race (`LockBusy`), never a hang.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from processor.errors import ShardflowError
from processor.uris import mask_uri
from sinks._shared import AsyncWarehouse, LockBusy, record_commit
from sinks.base import Batch, Lease

__all__ = ["PooledWarehouse", "WriteAgain"]


class WriteAgain(ShardflowError):
    """The batch cannot commit as it is but can as `batch` (cleaned, or loaded another way)."""

    def __init__(self, message: str, batch: Batch) -> None:
        super().__init__(message)
        self.batch = batch


class PooledWarehouse(AsyncWarehouse):
    """Lifecycle, pools and lease-race handling; a backend supplies driver, SQL and error mapping."""

    def __init__(
        self,
        uri: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        command_timeout: float = 60.0,
        lease_timeout: float = 5.0,
        idle_timeout: float = 5.0,
        lock_timeout: float = 2.0,
    ) -> None:
        self.uri = uri
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.lease_timeout = lease_timeout
        self.idle_timeout = idle_timeout
        """The server ends a session idle this long inside a transaction (a stopped client)."""
        self.lock_timeout = lock_timeout
        """A lease statement waits this long at most for a row lock, then counts as a lost race."""
        self._writes: Any = None
        self._leases: Any = None
        self._started = False
        self._lock = asyncio.Lock()

    def _shown(self) -> str:
        return mask_uri(self.uri)

    # -- what a backend supplies ------------------------------------------------------------

    @abstractmethod
    def _translate(self, exc: Exception, where: str) -> ShardflowError | None:
        """The shardflow error for a driver or socket error (LockBusy for a lock timeout);
        None for anything else, which then propagates as it is."""

    @abstractmethod
    async def _make_pool(self, leases: bool) -> Any: ...

    async def _prepare(self) -> None:
        """Learn what the pools' session settings depend on; runs before the first pool is made."""

    @abstractmethod
    async def _migrate(self, writes: Any) -> None:
        """Create or migrate the schema under a server-wide lock."""

    @abstractmethod
    async def _close_pool(self, pool: Any) -> None: ...

    @abstractmethod
    def _terminate_pool(self, pool: Any) -> None: ...

    @abstractmethod
    async def _write(self, batch: Batch) -> tuple[int, dict[str, int]]:
        """One fenced transaction: (new rows, new dead letters by stage); WriteAgain to retry."""

    @abstractmethod
    async def _take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None: ...

    @abstractmethod
    async def _release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool: ...

    @abstractmethod
    async def _request_handoff(self, stream: str, shard_id: str, requester: str) -> None: ...

    @abstractmethod
    async def _ping(self) -> None: ...

    # -- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        """Driver errors inside become shardflow errors, translated in one place per backend."""
        try:
            yield
        except ShardflowError:
            raise
        except Exception as exc:
            error = self._translate(exc, f"{what} on {self._shown()}")
            if error is None:
                raise
            raise error from exc

    async def _pool(self, leases: bool) -> Any:
        if not self._started:
            await self.start()
        async with self._lock:
            if leases:
                if self._leases is None:
                    self._leases = await self._make_pool(leases=True)
                return self._leases
            if self._writes is None:
                self._writes = await self._make_pool(leases=False)
            return self._writes

    async def start(self) -> None:
        """Connect both pools and migrate the schema. Idempotent; raises WarehouseUnavailable."""
        async with self._lock:
            if self._started:
                return
            async with self._errors("start"):
                await self._prepare()
                if self._leases is None:
                    self._leases = await self._make_pool(leases=True)
                if self._writes is None:
                    self._writes = await self._make_pool(leases=False)
                await self._migrate(self._writes)
            self._started = True

    async def close(self) -> None:
        """Close both pools, each within connect_timeout, then by force."""
        pools = [p for p in (self._writes, self._leases) if p is not None]
        self._writes = self._leases = None
        self._started = False
        for pool in pools:
            try:
                async with asyncio.timeout(self.connect_timeout), self._errors("close"):
                    await self._close_pool(pool)
            except (TimeoutError, ShardflowError):
                self._terminate_pool(pool)

    # -- Sink and LeaseStore verbs whose shape is the backend's business no more ----------------

    async def write_batch(self, batch: Batch) -> int:
        started = time.perf_counter()
        try:
            new, filed = await self._write(batch)
        except WriteAgain as again:
            new, filed = await self._write(again.batch)
        record_commit(started, new, filed)
        return new

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                await self._ping()
        except (ShardflowError, TimeoutError):
            return False
        return True

    async def take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None:
        with suppress(LockBusy):
            return await self._take_lease(stream, shard_id, owner, expected_counter, ttl)
        return None

    async def release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool:
        with suppress(LockBusy):
            return await self._release_lease(stream, shard_id, owner, lease_counter)
        return False

    async def request_handoff(self, stream: str, shard_id: str, requester: str) -> None:
        with suppress(LockBusy):
            await self._request_handoff(stream, shard_id, requester)
