"""A lease row locked by someone else never hangs a takeover, on real PostgreSQL and MariaDB.

The real case is a consumer stopped (SIGSTOP, GC pause) inside its fenced commit, covered end to
end by tests/consumer/test_processes.py; here the lock is held by a plain driver session (or by
a connection of the writer's own pool, left idle inside its transaction as a stopped client
leaves it), so the bounds can be measured exactly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomysql
import asyncpg
import pytest

from processor.errors import WarehouseUnavailable
from sinks import Batch
from sinks.mysql import MysqlWarehouse
from sinks.postgres import PostgresWarehouse
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take
from tests.support.wait import eventually

LOCK_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
LOCK_ROW = {
    "postgres": "SELECT 1 FROM shardflow_leases WHERE stream = $1 AND shard_id = $2 FOR UPDATE",
    "mysql": "SELECT 1 FROM shardflow_leases WHERE stream = %s AND shard_id = %s FOR UPDATE",
}


def _open(url: str) -> PostgresWarehouse | MysqlWarehouse:
    if url.startswith("postgresql"):
        return PostgresWarehouse(url, lock_timeout=LOCK_TIMEOUT, idle_timeout=IDLE_TIMEOUT)
    return MysqlWarehouse(url, lock_timeout=LOCK_TIMEOUT, idle_timeout=IDLE_TIMEOUT)


@pytest.fixture
async def wh(server_url: str) -> AsyncIterator[PostgresWarehouse | MysqlWarehouse]:
    warehouse = _open(server_url)
    await warehouse.start()
    try:
        yield warehouse
    finally:
        await warehouse.close()


@asynccontextmanager
async def lease_row_locked(wh: PostgresWarehouse | MysqlWarehouse) -> AsyncIterator[None]:
    """A session of its own holds the lease row's lock until the block ends."""
    if isinstance(wh, PostgresWarehouse):
        pg = await asyncpg.connect(wh.dsn)
        try:
            async with pg.transaction():
                assert await pg.fetchval(LOCK_ROW["postgres"], STREAM, SHARD) == 1
                yield
        finally:
            await pg.close()
        return
    my = await aiomysql.connect(**wh._connect)
    try:
        await my.begin()
        async with my.cursor() as cur:
            await cur.execute(LOCK_ROW["mysql"], (STREAM, SHARD))
        yield
        await my.rollback()
    finally:
        my.close()


async def test_take_meets_a_locked_lease_row_and_gives_up(wh: PostgresWarehouse | MysqlWarehouse) -> None:
    fence = await take(wh)
    async with lease_row_locked(wh):
        began = time.monotonic()
        assert await wh.take_lease(STREAM, SHARD, "c2", fence.lease_counter, 10.0) is None
        assert await wh.release_lease(STREAM, SHARD, fence.owner, fence.lease_counter) is False
        await wh.request_handoff(STREAM, SHARD, "c2")
        with pytest.raises(WarehouseUnavailable):
            await wh.renew_leases(STREAM, fence.owner, {SHARD: fence.lease_counter}, 10.0)
        took = time.monotonic() - began
        assert took < 4 * (LOCK_TIMEOUT + 1.0), f"four lock waits took {took:.1f}s"
    taken = await wh.take_lease(STREAM, SHARD, "c2", fence.lease_counter, 10.0)
    assert taken is not None and taken.owner == "c2"
    [lease] = [le for le in await wh.list_leases(STREAM) if le.shard_id == SHARD]
    assert lease.handoff_to is None


@asynccontextmanager
async def stopped_inside_commit(wh: PostgresWarehouse | MysqlWarehouse) -> AsyncIterator[None]:
    """A write connection that locked the lease row in its transaction and then went silent."""
    pool = await wh._pool(False)
    conn = await pool.acquire()
    try:
        await _lock_and_go_silent(wh, conn)
        yield
    finally:
        if isinstance(wh, PostgresWarehouse):
            # asyncpg hands a connection the server ended back to the pool by itself
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
                await pool.release(conn)
        else:
            conn.close()
            pool.release(conn)


async def _lock_and_go_silent(wh: PostgresWarehouse | MysqlWarehouse, conn: Any) -> None:
    if isinstance(wh, PostgresWarehouse):
        await conn.execute("BEGIN")
        await conn.execute(LOCK_ROW["postgres"], STREAM, SHARD)
    else:
        await conn.begin()
        async with conn.cursor() as cur:
            await cur.execute(LOCK_ROW["mysql"], (STREAM, SHARD))


async def test_server_ends_a_writer_stopped_inside_its_commit(wh: PostgresWarehouse | MysqlWarehouse) -> None:
    fence = await take(wh)

    async def taken_over() -> bool:
        return await wh.take_lease(STREAM, SHARD, "c2", fence.lease_counter, 10.0) is not None

    async with stopped_inside_commit(wh):
        began = time.monotonic()
        await eventually(taken_over, timeout=15, interval=0.1, what="the takeover past the stopped writer")
        took = time.monotonic() - began
    assert took < IDLE_TIMEOUT + LOCK_TIMEOUT + 3.0, f"takeover took {took:.1f}s"
    [lease] = [le for le in await wh.list_leases(STREAM) if le.shard_id == SHARD]
    assert lease.owner == "c2"


async def test_stale_writer_loads_nothing_and_locks_nothing(wh: PostgresWarehouse | MysqlWarehouse) -> None:
    """The fence only locks a row that is still the writer's: a stale batch leaves no lock behind."""
    fence = await take(wh)
    taken = await wh.take_lease(STREAM, SHARD, "c2", fence.lease_counter, 10.0)
    assert taken is not None
    rows = [make_row(i) for i in range(200)]
    with pytest.raises(Exception, match="no longer"):
        await wh.write_batch(Batch(STREAM, SHARD, rows, [], "200", fence))
    assert await count(wh) == 0
    assert await wh.release_lease(STREAM, SHARD, "c2", taken.lease_counter) is True
