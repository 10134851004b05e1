"""A row the warehouse refuses never stops its shard: the committer commits the batch in halves,
files each refused row as a `load` dead letter, loads the rest, and moves the checkpoint.

The refusal is the real database's: a CHECK constraint (PostgreSQL, MariaDB) or a BEFORE INSERT
trigger (SQLite, which cannot add a constraint to a table) on `page_views` that refuses URLs
containing `/refused/`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from urllib.parse import urlsplit

import asyncpg
import orjson
import pymysql

from processor.event import format_ts, validate_event
from shard_consumer.committer import PendingBatch, ShardCommitter
from shard_consumer.pool import Processed
from sinks import DeadLetter, Warehouse
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take

REFUSED = (3, 50, 51, 99)


async def refuse_urls(url: str) -> None:
    """Make the warehouse itself refuse rows whose url contains /refused/."""
    if url.startswith("postgres"):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "ALTER TABLE page_views ADD CONSTRAINT refused_url CHECK (url NOT LIKE '%/refused/%')"
            )
        finally:
            await conn.close()
    elif url.startswith("mysql"):
        parts = urlsplit(url)

        def add() -> None:
            conn = pymysql.connect(
                host=parts.hostname,
                port=parts.port or 3306,
                user=parts.username or "root",
                password=parts.password or "",
                database=parts.path.lstrip("/"),
            )
            try:
                with conn.cursor() as cur:
                    # a CHECK: with INSERT IGNORE MariaDB skipped such a row with a mere warning
                    cur.execute(
                        "ALTER TABLE page_views ADD CONSTRAINT refused_url CHECK (url NOT LIKE '%/refused/%')"
                    )
            finally:
                conn.close()

        await asyncio.to_thread(add)
    else:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(
                "CREATE TRIGGER refused_url BEFORE INSERT ON page_views "
                "WHEN NEW.url LIKE '%/refused/%' BEGIN SELECT RAISE(ABORT, 'refused url'); END"
            )
        conn.close()


def batch_rows() -> Processed:
    rows = [
        make_row(i, url=f"https://example.com/refused/{i}" if i in REFUSED else f"https://example.com/{i}")
        for i in range(100)
    ]
    letter = DeadLetter("decode", "record is not JSON", "{oops", SHARD, "7", key=f"decode:{SHARD}:7:0")
    return Processed(rows, [letter])


async def commit_once(warehouse: Warehouse, checkpoint: str) -> None:
    fence = await take(warehouse)
    committer = ShardCommitter(warehouse, STREAM, SHARD, fence)
    loop = asyncio.get_running_loop()
    processed: asyncio.Future[Processed] = loop.create_future()
    processed.set_result(batch_rows())
    await committer.put(PendingBatch(processed, checkpoint, 101))
    await committer.finish()
    async with asyncio.timeout(60):
        await committer.run()
    assert committer.committed == checkpoint


async def test_refused_rows_become_load_dead_letters_and_the_rest_loads(
    warehouse: Warehouse, warehouse_url: str
) -> None:
    await refuse_urls(warehouse_url)
    await commit_once(warehouse, "00000000000000000100")

    assert await count(warehouse) == 100 - len(REFUSED)
    assert await count(warehouse, "url LIKE '%/refused/%'") == 0
    load = await warehouse.list_dead_letters(stage="load")
    assert sorted(orjson.loads(letter.payload)["event_id"] for letter in load) == [
        f"ev-{i:08d}" for i in REFUSED
    ]
    assert all("refused" in letter.reason for letter in load)
    # each letter holds the event as it travelled, so a redrive can load it once the table takes it
    event = validate_event(orjson.loads(load[0].payload), received_at=time.time())
    row = make_row(int(event["event_id"][3:]), url=event["url"])
    assert event["url"].startswith("https://example.com/refused/")
    assert event["ts"] == format_ts(row.ts.timestamp())
    assert row.properties is not None and event["properties"] == orjson.loads(row.properties)
    assert len(await warehouse.list_dead_letters(stage="decode")) == 1
    assert await warehouse.get_checkpoint(STREAM, SHARD) == "00000000000000000100"

    # the same batch again (a replay after a crash midway): nothing doubles
    await commit_once(warehouse, "00000000000000000100")
    assert await count(warehouse) == 100 - len(REFUSED)
    assert len(await warehouse.list_dead_letters(stage="load")) == len(REFUSED)
    assert len(await warehouse.list_dead_letters(stage="decode")) == 1
