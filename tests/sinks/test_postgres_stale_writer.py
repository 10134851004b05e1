"""PostgreSQL: a writer stuck in the middle of a COPY is ended by the shard's next owner.

The stuck writer here is a driver session marked as the sink marks its writers, whose COPY sent
some rows and then waits for more (as the server sees a stopped client); the real SIGSTOPped
process is tests/consumer/test_stale_copy_process.py. Without the termination the new owner's
write of the same event_ids waits until that session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from processor.errors import WarehouseUnavailable
from sinks import Batch, Fence
from sinks.base import PAGE_VIEW_COLUMNS, PageView
from sinks.postgres import PostgresWarehouse, _mark, _marked_transaction
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take
from tests.support.services import fresh_postgres
from tests.support.wait import eventually

OTHER_SHARD = "shardId-000000000001"
SENT = 6000
"""Rows the stuck writer hands its driver (which keeps the last few hundred KiB buffered)."""
INSERTED = 2000
"""Rows the server has taken from the stuck COPY: past its 1000-row insert buffer, so the first
rows are in the table and their event_ids locked."""


@pytest.fixture
def other_database() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


async def _rows_then_wait(rows: list[PageView], stuck: asyncio.Event) -> AsyncIterator[PageView]:
    for row in rows:
        yield row
    stuck.set()
    await asyncio.Event().wait()


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        return bool(await asyncio.wait_for(conn.fetchval("SELECT true"), 5))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
        # a session the server ended mid-protocol can leave asyncpg's state machine mid-operation
        return False


async def _gone(observer: asyncpg.Connection, pid: int) -> bool:
    return not await observer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


@asynccontextmanager
async def stuck_in_copy(url: str, mark: str, rows: list[PageView]) -> AsyncIterator[asyncpg.Connection]:
    """A session marked `mark` whose COPY into page_views inserted the first `INSERTED` of `rows`
    and waits for more."""
    conn = await asyncpg.connect(url)
    observer = await asyncpg.connect(url)
    stuck = asyncio.Event()

    async def copy() -> None:
        async with _marked_transaction(conn, mark):
            await conn.copy_records_to_table(
                "page_views", records=_rows_then_wait(rows, stuck), columns=PAGE_VIEW_COLUMNS
            )

    task = asyncio.create_task(copy())
    try:

        async def inserted() -> bool:
            done = await observer.fetchval(
                "SELECT tuples_processed FROM pg_stat_progress_copy WHERE pid = $1", conn.get_server_pid()
            )
            return stuck.is_set() and done is not None and done >= INSERTED

        await eventually(inserted, timeout=20, what="the stuck writer's rows inside its COPY")
        yield conn
    finally:
        task.cancel()
        with contextlib.suppress(
            asyncio.CancelledError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError
        ):
            await task
        conn.terminate()
        await observer.close()


@pytest.mark.parametrize("merging", [False, True], ids=["direct", "merge"])
async def test_new_owner_ends_a_writer_stuck_in_its_copy(wh: PostgresWarehouse, merging: bool) -> None:
    old = await take(wh, owner="c1")
    rows = [make_row(i) for i in range(SENT)]
    async with stuck_in_copy(wh.dsn, _mark(STREAM, SHARD, old.lease_counter), rows) as stale:
        taken = await wh.take_lease(STREAM, SHARD, "c2", old.lease_counter, 10.0)
        assert taken is not None
        if merging:
            wh._merging.add((STREAM, SHARD))
        replay = rows[:100] + [make_row(i) for i in range(100_000, 100_050)]
        fence = Fence("c2", taken.lease_counter)
        assert (
            await asyncio.wait_for(wh.write_batch(Batch(STREAM, SHARD, replay, [], "150", fence)), 15) == 150
        )
        assert not await _alive(stale)
    assert await count(wh) == 150
    assert await wh.get_checkpoint(STREAM, SHARD) == "150"


async def test_only_stale_writers_of_the_same_shard_are_ended(
    wh: PostgresWarehouse, other_database: str
) -> None:
    """Same shard and a lower counter: ended. Same or higher counter, another shard, another
    database, an unmarked session: left alone."""
    fence = await take(wh, owner="c1")
    await take(wh, shard_id=OTHER_SHARD)
    marks = {
        "stale": (wh.dsn, _mark(STREAM, SHARD, fence.lease_counter - 1)),
        "same": (wh.dsn, _mark(STREAM, SHARD, fence.lease_counter)),
        "newer": (wh.dsn, _mark(STREAM, SHARD, fence.lease_counter + 1)),
        "other shard": (wh.dsn, _mark(STREAM, OTHER_SHARD, fence.lease_counter - 1)),
        "unmarked": (wh.dsn, ""),
        "other database": (other_database, _mark(STREAM, SHARD, fence.lease_counter - 1)),
    }
    sessions: dict[str, asyncpg.Connection] = {}
    observer = await asyncpg.connect(wh.dsn)
    try:
        for name, (url, mark) in marks.items():
            sessions[name] = conn = await asyncpg.connect(url)
            await conn.execute(f"BEGIN; SET LOCAL application_name = '{mark}'")
        stale_pid = sessions["stale"].get_server_pid()
        assert await wh.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence)) == 1
        await eventually(lambda: _gone(observer, stale_pid), timeout=10, what="the stale session ended")
        assert not await _alive(sessions.pop("stale"))
        for name, conn in sessions.items():
            assert await _alive(conn), f"the {name} session was ended"
    finally:
        for conn in sessions.values():
            conn.terminate()
        await observer.close()


async def test_a_writer_shows_its_lease_only_while_it_writes(wh: PostgresWarehouse) -> None:
    fence = await take(wh, owner="c1")
    pool = await wh._pool(False)
    async with pool.acquire() as conn:
        before = await conn.fetchval("SHOW application_name")
        async with _marked_transaction(conn, _mark(STREAM, SHARD, fence.lease_counter)):
            shown = await conn.fetchval("SHOW application_name")
        assert await conn.fetchval("SHOW application_name") == before
    assert shown.split(" ") == ["shardflow-w", shown.split(" ")[1], f"{fence.lease_counter:019d}"]
    assert len(shown.encode()) <= 63
    assert shown != _mark(STREAM, OTHER_SHARD, fence.lease_counter)


def _as(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{user}@{parts.hostname}:{parts.port or 5432}", *parts[2:]))


@asynccontextmanager
async def roles(url: str, *names: str) -> AsyncIterator[None]:
    """Plain login roles (no superuser, no pg_signal_backend) that may write shardflow's tables."""
    admin = await asyncpg.connect(url)
    try:
        for name in names:
            await admin.execute(f"CREATE ROLE {name} LOGIN")
            await admin.execute(
                f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}; "
                f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}; "
                f"GRANT CREATE ON SCHEMA public TO {name}; "
                f"GRANT CREATE, TEMP ON DATABASE {urlsplit(url).path[1:]} TO {name}"
            )
        yield
    finally:
        for name in names:
            await admin.execute(f"DROP OWNED BY {name}")
            await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def test_a_session_the_role_may_not_end_is_logged_once_and_left(
    wh: PostgresWarehouse, caplog: pytest.LogCaptureFixture
) -> None:
    fence = await take(wh, owner="c1")
    writer, other = f"sf_w_{secrets.token_hex(4)}", f"sf_o_{secrets.token_hex(4)}"
    async with roles(wh.dsn, writer, other):
        foreign = await asyncpg.connect(_as(wh.dsn, other))
        limited = PostgresWarehouse(_as(wh.dsn, writer))
        try:
            await foreign.execute(f"BEGIN; SET LOCAL application_name = '{_mark(STREAM, SHARD, 0)}'")
            with caplog.at_level(logging.WARNING, logger="sinks.postgres"):
                for i in range(2):
                    batch = Batch(STREAM, SHARD, [make_row(i)], [], str(i), fence)
                    assert await limited.write_batch(batch) == 1
            refusals = [r for r in caplog.records if "may not end 1 stale writer session" in r.getMessage()]
            assert len(refusals) == 1
            assert await _alive(foreign)
        finally:
            await limited.close()
            foreign.terminate()
    assert await count(wh) == 2


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", ("10", "5", "3")), ("?tcp_keepalives_idle=7&tcp_keepalives_count=2", ("7", "5", "2"))],
    ids=["defaults", "dsn-wins"],
)
async def test_write_connections_carry_tcp_keepalives(
    postgres_url: str, query: str, expected: tuple[str, str, str]
) -> None:
    """A writer whose host vanished mid-COPY is found dead in ~25 s instead of the kernel's 2 h."""
    async with PostgresWarehouse(postgres_url + query) as warehouse:
        pool = await warehouse._pool(False)
        async with pool.acquire() as conn:
            shown = [await conn.fetchval(f"SHOW tcp_keepalives_{k}") for k in ("idle", "interval", "count")]
    assert tuple(shown) == expected


async def test_a_server_that_refuses_termination_outright_is_asked_no_more(
    wh: PostgresWarehouse, caplog: pytest.LogCaptureFixture
) -> None:
    """Where ending sessions is not allowed at all, one batch is retried and later ones write as
    before the termination fence (and wait as before)."""
    fence = await take(wh, owner="c1")
    writer = f"sf_w_{secrets.token_hex(4)}"
    async with roles(wh.dsn, writer):
        admin = await asyncpg.connect(wh.dsn)
        await admin.execute("REVOKE EXECUTE ON FUNCTION pg_terminate_backend(integer, bigint) FROM PUBLIC")
        await admin.close()
        limited = PostgresWarehouse(_as(wh.dsn, writer))
        try:
            with caplog.at_level(logging.WARNING, logger="sinks.postgres"):
                with pytest.raises(WarehouseUnavailable, match="permission denied"):
                    await limited.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence))
                for i in range(2):
                    batch = Batch(STREAM, SHARD, [make_row(i)], [], str(i), fence)
                    assert await limited.write_batch(batch) == 1
            refusals = [r for r in caplog.records if "refuses to end stale writer sessions" in r.getMessage()]
            assert len(refusals) == 1
        finally:
            await limited.close()
    assert await count(wh) == 2
