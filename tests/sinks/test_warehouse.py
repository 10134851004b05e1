"""Every Warehouse method, on SQLite, real PostgreSQL and real MariaDB alike."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from processor.errors import InvalidRequest, LeaseLost
from processor.streams.base import SHARD_END, ShardInfo
from sinks import Batch, DeadLetter, Fence, Warehouse, open_warehouse
from sinks.base import LeaseStore, Sink
from sinks.schema import LATEST_VERSION
from tests.sinks.conftest import make_row

STREAM = "events"
SHARD = "shardId-000000000000"
SHARDS = [
    ShardInfo(SHARD, 0, 2**127 - 1),
    ShardInfo("shardId-000000000001", 2**127, 2**128 - 1),
    ShardInfo("shardId-000000000002", 0, 2**128 - 1, parent_shard_ids=(SHARD, "shardId-000000000001")),
]


async def take(wh: Warehouse, shard_id: str = SHARD, owner: str = "c1") -> Fence:
    await wh.create_leases(STREAM, SHARDS)
    lease = next(le for le in await wh.list_leases(STREAM) if le.shard_id == shard_id)
    taken = await wh.take_lease(STREAM, shard_id, owner, lease.lease_counter, 10.0)
    assert taken is not None
    return Fence(owner, taken.lease_counter)


async def count(wh: Warehouse, where: str = "1=1") -> int:
    result = await wh.query(f"SELECT count(*) FROM page_views WHERE {where}")
    return int(result.rows[0][0])  # type: ignore[call-overload]


async def test_implements_both_protocols(warehouse: Warehouse) -> None:
    assert isinstance(warehouse, Sink)
    assert isinstance(warehouse, LeaseStore)
    assert await warehouse.ping()


async def test_write_batch_loads_rows_dead_letters_and_checkpoint(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    rows = [make_row(i) for i in range(250)]
    letters = [DeadLetter("transform", "bad url", '{"url": 1}', SHARD, "7")]
    batch = Batch(STREAM, SHARD, rows, letters, rows[-1].sequence_number, fence)
    assert await warehouse.write_batch(batch) == 250
    assert await count(warehouse) == 250
    assert await warehouse.get_checkpoint(STREAM, SHARD) == rows[-1].sequence_number
    [cp] = await warehouse.checkpoints(STREAM)
    assert (cp.shard_id, cp.sequence_number, cp.lease_counter) == (SHARD, rows[-1].sequence_number, 1)
    assert abs((datetime.now(UTC) - cp.updated_at).total_seconds()) < 60
    [stored] = await warehouse.list_dead_letters()
    assert (stored.stage, stored.reason, stored.payload, stored.shard_id, stored.sequence_number) == (
        "transform",
        "bad url",
        '{"url": 1}',
        SHARD,
        "7",
    )
    assert await warehouse.get_checkpoint(STREAM, "shardId-000000000001") is None


async def test_row_round_trips_every_column(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    row = make_row(3, is_bot=True, name="Signed Up", traits='{"email": "a@b.c"}')
    await warehouse.write_batch(Batch(STREAM, SHARD, [row], [], row.sequence_number, fence))
    result = await warehouse.query(
        "SELECT event_id, type, title, user_id, sequence_number, is_bot, browser, name, properties, traits, "
        "ts, loaded_at FROM page_views"
    )
    assert result.columns[:3] == ("event_id", "type", "title")
    [got] = result.rows
    assert got[:5] == (row.event_id, "page", row.title, row.user_id, row.sequence_number)
    assert bool(got[5]) is True
    assert got[6:8] == ("Chrome", "Signed Up")
    assert json.loads(str(got[8])) == {"plan": "pro", "n": 1}
    assert json.loads(str(got[9])) == {"email": "a@b.c"}
    assert str(got[10]).startswith("2026-11-28")
    assert got[11] is not None


async def test_duplicates_are_skipped(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    rows = [make_row(i) for i in range(100)]
    assert await warehouse.write_batch(Batch(STREAM, SHARD, rows[:60], [], "60", fence)) == 60
    # a replay overlapping the first batch, with an in-batch duplicate too
    again = [*rows[40:], rows[99]]
    assert await warehouse.write_batch(Batch(STREAM, SHARD, again, [], "100", fence)) == 40
    assert await count(warehouse) == 100
    assert await warehouse.get_checkpoint(STREAM, SHARD) == "100"


async def test_stale_fence_gets_lease_lost_and_writes_nothing(warehouse: Warehouse) -> None:
    old = await take(warehouse, owner="c1")
    new = await warehouse.take_lease(STREAM, SHARD, "c2", old.lease_counter, 10.0)
    assert new is not None and new.owner == "c2" and new.lease_counter == old.lease_counter + 1
    letters = [DeadLetter("load", "x", "{}")]
    with pytest.raises(LeaseLost):
        await warehouse.write_batch(Batch(STREAM, SHARD, [make_row(1)], letters, "1", old))
    # same counter, wrong owner: also refused
    with pytest.raises(LeaseLost):
        await warehouse.write_batch(
            Batch(STREAM, SHARD, [make_row(1)], [], "1", Fence("c1", new.lease_counter))
        )
    # a shard with no lease row at all
    with pytest.raises(LeaseLost):
        await warehouse.write_batch(Batch(STREAM, "shardId-9", [make_row(1)], [], "1", old))
    assert await count(warehouse) == 0
    assert await warehouse.list_dead_letters() == []
    assert await warehouse.get_checkpoint(STREAM, SHARD) is None
    fence = Fence("c2", new.lease_counter)
    assert await warehouse.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence)) == 1


async def test_shard_end_checkpoint_without_rows(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    assert await warehouse.write_batch(Batch(STREAM, SHARD, [], [], SHARD_END, fence)) == 0
    assert await warehouse.get_checkpoint(STREAM, SHARD) == SHARD_END
    [lease] = [le for le in await warehouse.list_leases(STREAM) if le.shard_id == SHARD]
    assert lease.checkpoint == SHARD_END


async def test_lease_lifecycle(warehouse: Warehouse) -> None:
    await warehouse.create_leases(STREAM, SHARDS)
    await warehouse.create_leases(STREAM, SHARDS)  # idempotent
    leases = {le.shard_id: le for le in await warehouse.list_leases(STREAM)}
    assert sorted(leases) == [s.shard_id for s in SHARDS]
    child = leases["shardId-000000000002"]
    assert child.parent_shard_ids == (SHARD, "shardId-000000000001")
    assert child.owner is None and child.lease_counter == 0 and child.checkpoint is None
    assert await warehouse.list_leases("other-stream") == []

    clock = await warehouse.now()
    got = await warehouse.take_lease(STREAM, SHARD, "c1", 0, 10.0)
    assert got is not None and got.owner == "c1" and got.lease_counter == 1
    assert clock + 9 < got.expires_at < clock + 15
    # the loser of a race gets None
    assert await warehouse.take_lease(STREAM, SHARD, "c2", 0, 10.0) is None

    # renew keeps ours, drops one we do not hold
    await warehouse.take_lease(STREAM, "shardId-000000000001", "c2", 0, 10.0)
    renewed = await warehouse.renew_leases(STREAM, "c1", {SHARD: 1, "shardId-000000000001": 1}, 30.0)
    assert list(renewed) == [SHARD]
    assert renewed[SHARD].expires_at > got.expires_at + 15

    await warehouse.request_handoff(STREAM, SHARD, "c2")
    leases = {le.shard_id: le for le in await warehouse.list_leases(STREAM)}
    assert leases[SHARD].handoff_to == "c2"

    assert not await warehouse.release_lease(STREAM, SHARD, "c2", 1)
    assert await warehouse.release_lease(STREAM, SHARD, "c1", 1)
    freed = {le.shard_id: le for le in await warehouse.list_leases(STREAM)}[SHARD]
    assert freed.owner is None and freed.handoff_to is None
    assert freed.lease_counter == 2  # release changes owner, so it moves the fence too
    assert await warehouse.renew_leases(STREAM, "c1", {SHARD: 1}, 10.0) == {}
    again = await warehouse.take_lease(STREAM, SHARD, "c2", freed.lease_counter, 10.0)
    assert again is not None and again.owner == "c2"


async def test_concurrent_takes_have_one_winner(warehouse: Warehouse) -> None:
    await warehouse.create_leases(STREAM, SHARDS)
    results = await asyncio.gather(*(warehouse.take_lease(STREAM, SHARD, f"c{i}", 0, 10.0) for i in range(8)))
    assert sum(r is not None for r in results) == 1


async def test_dead_letters_list_filter_and_delete(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    letters = [
        DeadLetter("ingest", "url: must be a string, not a number", '{"url": 1}'),
        DeadLetter("ingest", "body is not JSON", "{oops"),
        DeadLetter("decode", "record is not JSON", "\\x00\\x01", SHARD, "5"),
    ]
    await warehouse.write_batch(Batch(STREAM, SHARD, [], letters, "5", fence))
    everything = await warehouse.list_dead_letters()
    assert [d.stage for d in everything] == ["ingest", "ingest", "decode"]
    assert [d.reason for d in await warehouse.list_dead_letters(stage="ingest")] == [
        letters[0].reason,
        letters[1].reason,
    ]
    assert [d.payload for d in await warehouse.list_dead_letters(reason_like="%JSON%")] == [
        "{oops",
        "\\x00\\x01",
    ]
    assert len(await warehouse.list_dead_letters(limit=2)) == 2
    assert await warehouse.delete_dead_letters([everything[0].id, everything[2].id, 10**9]) == 2
    assert [d.id for d in await warehouse.list_dead_letters()] == [everything[1].id]
    assert await warehouse.delete_dead_letters([]) == 0


async def test_emoji_and_sql_looking_values_round_trip(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    title = "Ünïcödé 🎉👩‍👩‍👧 — '; DROP TABLE page_views; --"
    row = make_row(
        1,
        title=title,
        url="https://example.com/?q=' OR '1'='1",
        user_id='Robert"); DROP TABLE students;--',
        referrer="tab\there\nnewline\\backslash \\N",
        properties='{"emoji": "🚀", "quote": "\\"", "sql": "1; DELETE FROM x"}',
    )
    letter = DeadLetter("ingest", "😀 bad", "payload 🐍 '\"\\")
    await warehouse.write_batch(Batch(STREAM, SHARD, [row], [letter], "1", fence))
    result = await warehouse.query("SELECT title, url, user_id, referrer, properties FROM page_views")
    [(got_title, url, user_id, referrer, props)] = result.rows
    assert (got_title, url, user_id, referrer) == (title, row.url, row.user_id, row.referrer)
    assert json.loads(str(props)) == {"emoji": "🚀", "quote": '"', "sql": "1; DELETE FROM x"}
    [stored] = await warehouse.list_dead_letters()
    assert (stored.reason, stored.payload) == ("😀 bad", "payload 🐍 '\"\\")
    filtered = await warehouse.query("SELECT count(*) FROM page_views WHERE title LIKE '%🎉%'")
    assert int(filtered.rows[0][0]) == 1  # type: ignore[call-overload]


async def test_query_is_read_only(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    await warehouse.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence))
    for sql in (
        "DELETE FROM page_views",
        "UPDATE page_views SET title = 'x'",
        "INSERT INTO shardflow_dead_letters (stage, reason, payload) VALUES ('a', 'b', 'c')",
        "DROP TABLE page_views",
    ):
        with pytest.raises(InvalidRequest):
            await warehouse.query(sql)
    with pytest.raises(InvalidRequest):
        await warehouse.query("SELECT * FROM no_such_table")
    assert await count(warehouse) == 1
    assert await warehouse.list_dead_letters() == []
    limited = await warehouse.query("SELECT event_id FROM page_views", limit=0)
    assert limited.columns == ("event_id",) and limited.rows == []


async def test_start_is_idempotent_and_migrations_rerun_cleanly(warehouse_url: str) -> None:
    first = open_warehouse(warehouse_url)
    await first.start()
    await first.start()
    fence = await take(first)
    await first.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence))
    others = [open_warehouse(warehouse_url) for _ in range(3)]
    await asyncio.gather(*(o.start() for o in others))
    versions = await others[0].query("SELECT version FROM shardflow_schema_version ORDER BY version")
    assert [int(v[0]) for v in versions.rows] == list(range(1, LATEST_VERSION + 1))  # type: ignore[call-overload]
    assert await count(others[0]) == 1
    for wh in (first, *others):
        await wh.close()
        await wh.close()


async def test_concurrent_schema_creation_on_a_fresh_database(warehouse_url: str) -> None:
    many = [open_warehouse(warehouse_url) for _ in range(4)]
    try:
        await asyncio.gather(*(wh.start() for wh in many))
        versions = await many[0].query("SELECT count(*) FROM shardflow_schema_version")
        assert int(versions.rows[0][0]) == LATEST_VERSION  # type: ignore[call-overload]
    finally:
        for wh in many:
            await wh.close()


async def test_nul_characters_never_block_a_shard(warehouse: Warehouse) -> None:
    """JSON allows \\u0000 and clients send it; PostgreSQL cannot store it, so it is replaced there."""
    fence = await take(warehouse)
    rows = [make_row(1, title="a\x00b", properties='{"k": "\\u0000"}'), make_row(2)]
    letters = [DeadLetter("ingest", "bad \x00", "\x00payload")]
    assert await warehouse.write_batch(Batch(STREAM, SHARD, rows, letters, "2", fence)) == 2
    result = await warehouse.query("SELECT title FROM page_views ORDER BY event_id")
    assert str(result.rows[0][0]) in ("a\x00b", "a\ufffdb")
    assert await warehouse.get_checkpoint(STREAM, SHARD) == "2"
    assert len(await warehouse.list_dead_letters()) == 1


async def test_a_later_release_adds_a_column_without_losing_rows(
    warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forward migration: one more step runs once on an existing schema; rows stay."""
    from sinks import schema

    first = open_warehouse(warehouse_url)
    await first.start()
    fence = await take(first)
    await first.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence))
    await first.close()

    # no IF NOT EXISTS: running the step twice would fail, so passing proves it ran once
    step = ("ALTER TABLE page_views ADD COLUMN country VARCHAR(2)",)
    patched = {dialect: (*steps, step) for dialect, steps in schema.MIGRATIONS.items()}
    monkeypatch.setattr(schema, "MIGRATIONS", patched)
    for _ in range(2):
        later = open_warehouse(warehouse_url)
        await later.start()
        versions = await later.query("SELECT version FROM shardflow_schema_version ORDER BY version")
        assert [int(str(v[0])) for v in versions.rows] == list(range(1, LATEST_VERSION + 2))
        result = await later.query("SELECT event_id, country FROM page_views")
        assert result.rows == [("ev-00000001", None)]
        await later.close()


async def test_event_ids_that_differ_only_by_trailing_spaces_are_distinct(warehouse: Warehouse) -> None:
    """MariaDB's utf8mb4_bin pads: without the NO PAD key the second event would be dropped as a duplicate."""
    fence = await take(warehouse)
    rows = [make_row(1, event_id="same"), make_row(2, event_id="same "), make_row(3, event_id="same  ")]
    assert await warehouse.write_batch(Batch(STREAM, SHARD, rows, [], "3", fence)) == 3
    assert await count(warehouse, "event_id LIKE 'same%'") == 3
