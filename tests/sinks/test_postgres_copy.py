"""PostgreSQL: a batch of new rows is COPYed straight into page_views; any event_id already there
sends it down the merge path (staging + ON CONFLICT DO NOTHING) with the same outcome as before.

Which path a batch took shows in the catalog: the merge path creates the session's temporary
staging table `shardflow_stage`, the direct path never does.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import pytest
from prometheus_client import REGISTRY

from processor.errors import LeaseLost
from sinks import Batch, DeadLetter
from sinks.postgres import _ENCODED, _ENCODED_MAX, PostgresWarehouse, _encode_timestamptz
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take
from tests.support.wait import eventually


async def staged(wh: PostgresWarehouse) -> bool:
    """True once some session of this database created the merge path's staging table."""
    result = await wh.query("SELECT count(*) FROM pg_class WHERE relname = 'shardflow_stage'")
    return int(result.rows[0][0]) > 0  # type: ignore[call-overload]


def rows_counted() -> float:
    return REGISTRY.get_sample_value("shardflow_sink_rows_total") or 0.0


async def test_new_rows_go_straight_into_page_views(wh: PostgresWarehouse) -> None:
    fence = await take(wh)
    rows = [make_row(i) for i in range(500)]
    letters = [DeadLetter("transform", "bad url", "{}", SHARD, "3", key="transform:3")]
    before = rows_counted()
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, letters, rows[-1].sequence_number, fence)) == 500
    assert rows_counted() - before == 500
    assert await count(wh) == 500
    assert await wh.get_checkpoint(STREAM, SHARD) == rows[-1].sequence_number
    assert len(await wh.list_dead_letters()) == 1
    assert not await staged(wh)


async def test_replayed_batch_loads_nothing_twice(wh: PostgresWarehouse) -> None:
    fence = await take(wh)
    rows = [make_row(i) for i in range(300)]
    letters = [DeadLetter("decode", "not JSON", "x", SHARD, "7", key="decode:7")]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, letters, "300", fence)) == 300
    before = rows_counted()
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, letters, "301", fence)) == 0
    assert rows_counted() == before
    assert await staged(wh)
    assert await count(wh) == 300
    assert await wh.get_checkpoint(STREAM, SHARD) == "301"
    assert len(await wh.list_dead_letters()) == 1


async def test_batch_partly_present_loads_only_the_new_rows(wh: PostgresWarehouse) -> None:
    fence = await take(wh)
    rows = [make_row(i) for i in range(150)]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows[:100], [], "100", fence)) == 100
    before = rows_counted()
    assert await wh.write_batch(Batch(STREAM, SHARD, rows[50:], [], "150", fence)) == 50
    assert rows_counted() - before == 50
    assert await count(wh) == 150
    assert await wh.get_checkpoint(STREAM, SHARD) == "150"


async def test_duplicate_inside_a_batch_is_loaded_once(wh: PostgresWarehouse) -> None:
    fence = await take(wh)
    rows = [make_row(1), make_row(2), make_row(1, title="again"), make_row(3)]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "4", fence)) == 3
    assert await count(wh) == 3
    assert await wh.get_checkpoint(STREAM, SHARD) == "4"


async def test_nul_characters_are_replaced_on_the_direct_path(wh: PostgresWarehouse) -> None:
    fence = await take(wh)
    rows = [make_row(1, title="a\x00b", properties='{"k": "\\u0000"}'), make_row(2)]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "2", fence)) == 2
    result = await wh.query("SELECT title, properties->>'k' FROM page_views ORDER BY event_id")
    assert result.rows[0] == ("a\ufffdb", "\ufffd")
    assert not await staged(wh)


async def test_nul_characters_in_a_batch_with_a_duplicate(wh: PostgresWarehouse) -> None:
    fence = await take(wh)
    assert await wh.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence)) == 1
    rows = [make_row(1), make_row(2, title="a\x00b"), make_row(3)]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "3", fence)) == 2
    assert await count(wh) == 3
    assert await wh.get_checkpoint(STREAM, SHARD) == "3"


async def test_stale_owner_writes_nothing_on_either_path(wh: PostgresWarehouse) -> None:
    old = await take(wh, owner="c1")
    assert await wh.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", old)) == 1
    taken = await wh.take_lease(STREAM, SHARD, "c2", old.lease_counter, 10.0)
    assert taken is not None
    letters = [DeadLetter("load", "x", "{}", key="load:x")]
    fresh = Batch(STREAM, SHARD, [make_row(2)], letters, "2", old)
    replay = Batch(STREAM, SHARD, [make_row(1), make_row(3)], letters, "3", old)
    for batch in (fresh, replay):
        with pytest.raises(LeaseLost, match="no longer c1#1"):
            await wh.write_batch(batch)
    assert await count(wh) == 1
    assert await wh.list_dead_letters() == []
    assert await wh.get_checkpoint(STREAM, SHARD) == "1"
    assert await wh.release_lease(STREAM, SHARD, "c2", taken.lease_counter) is True


@pytest.mark.parametrize("other_commits", [True, False], ids=["other-commits", "other-rolls-back"])
async def test_concurrent_writer_of_the_same_id(
    wh: PostgresWarehouse, postgres_url: str, other_commits: bool
) -> None:
    """The COPY waits for the other transaction; only if that commits is the id a duplicate."""
    fence = await take(wh)
    other = await asyncpg.connect(postgres_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "INSERT INTO page_views (event_id, type, received_at, is_bot, shard_id, "
            "sequence_number) VALUES ('ev-00000001', 'page', now(), false, 's', '1')"
        )
        rows = [make_row(1), make_row(2)]
        write = asyncio.create_task(wh.write_batch(Batch(STREAM, SHARD, rows, [], "2", fence)))

        async def waiting() -> bool:
            waits = await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            return bool(waits)

        await eventually(waiting, timeout=10, what="the batch waiting on the other writer's row")
        await (tx.commit() if other_commits else tx.rollback())
        assert await asyncio.wait_for(write, 10) == (1 if other_commits else 2)
    finally:
        await other.close()
    assert await count(wh) == 2
    assert await wh.get_checkpoint(STREAM, SHARD) == "2"


async def test_a_shard_merges_after_a_duplicate_until_a_merge_finds_every_row_new(
    wh: PostgresWarehouse,
) -> None:
    """A replay pays for one failed COPY, not one per batch; then new rows go straight in again."""
    fence = await take(wh)
    rows = [make_row(i) for i in range(40)]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows[:10], [], "10", fence)) == 10
    assert await wh.write_batch(Batch(STREAM, SHARD, rows[:20], [], "20", fence)) == 10
    # a new session has no staging table: whether the next batches create one shows their path
    await wh.close()
    assert await wh.write_batch(Batch(STREAM, SHARD, rows[20:30], [], "30", fence)) == 10
    assert await staged(wh), "the batch after a duplicate merges"
    await wh.close()
    assert await wh.write_batch(Batch(STREAM, SHARD, rows[30:], [], "40", fence)) == 10
    assert not await staged(wh), "a merge that found every row new ends merging"
    assert await count(wh) == 40


_TIMES = [
    datetime(2026, 11, 29, 4, 30, 6, 718000, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1500, 6, 1, 1, 2, 3, 999, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    datetime(2026, 1, 1, 12, 3, 4, 5),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime.max,
    datetime.min,
    date(2026, 3, 4),
]


async def test_write_connections_encode_and_decode_timestamps_as_asyncpg_does(
    wh: PostgresWarehouse, postgres_url: str
) -> None:
    """The write pool's faster timestamptz codec: same stored values, same Python values back."""
    plain = await asyncpg.connect(postgres_url)
    try:
        for value in _TIMES:
            sql = "SELECT $1::timestamptz, ($1::timestamptz)::text"
            expected = tuple(await plain.fetchrow(sql, value))
            got = (await wh.query(f"SELECT '{expected[1]}'::timestamptz, '{expected[1]}'")).rows[0]
            assert got == expected and type(got[0]) is type(expected[0]), value
            assert got[0].tzinfo is expected[0].tzinfo
        fence = await take(wh)
        rows = [make_row(i)._replace(ts=value) for i, value in enumerate(_TIMES[:-1])]
        assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "9", fence)) == len(rows)
        stored = (await wh.query("SELECT ts::text FROM page_views ORDER BY event_id")).rows
        sql = "SELECT ($1::timestamptz)::text"
        assert [text for (text,) in stored] == [await plain.fetchval(sql, row.ts) for row in rows]
        with pytest.raises(TypeError, match="expected a datetime"):  # as asyncpg's own encoder
            await wh.write_batch(Batch(STREAM, SHARD, [make_row(99)._replace(ts="x")], [], "10", fence))  # type: ignore[arg-type]
    finally:
        await plain.close()


async def test_a_write_connection_is_reset_after_a_query_not_after_a_batch(
    wh: PostgresWarehouse, postgres_url: str
) -> None:
    """asyncpg's reset (a round trip, four statements) runs only where session state may be left."""
    await wh.query("SELECT set_config('shardflow.left_behind', 'yes', false)")
    for _ in range(4):  # whichever pooled connection answers, none carries the setting
        result = await wh.query("SELECT coalesce(current_setting('shardflow.left_behind', true), '')")
        assert result.rows == [("",)]
    fence = await take(wh)
    rows = [make_row(i) for i in range(10)]
    assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "10", fence)) == 10
    observer = await asyncpg.connect(postgres_url)
    try:
        last = await observer.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'idle'"
        )
    finally:
        await observer.close()
    assert "COMMIT" in [r["query"] for r in last], "the batch's connection went back without a reset"


def test_timestamps_encode_the_same_from_the_table_and_it_stays_bounded() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    values = [start + timedelta(microseconds=997 * i) for i in range(_ENCODED_MAX + 10)]
    first = [_encode_timestamptz(value) for value in values]
    assert [_encode_timestamptz(value) for value in values] == first
    epoch, micro = datetime(2000, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
    assert first == [((value - epoch) // micro,) for value in values]
    assert len(_ENCODED) <= _ENCODED_MAX
    for _ in range(2):  # PostgreSQL's infinity, as asyncpg encodes this instant, cached or not
        assert _encode_timestamptz(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == (2**63 - 1,)
