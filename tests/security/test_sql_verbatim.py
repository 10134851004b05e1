"""SQL-looking values in every field travel the whole pipeline and are stored verbatim.

A real front end takes the event over HTTP, the embedded stream carries it, a consumer loads it
into a real warehouse (SQLite, PostgreSQL, MariaDB); the row is then read back with the
database's own driver and compared field by field. A rejected event with SQL in its payload is
filed as a dead letter, verbatim too.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from processor.event import STRING_FIELDS as EVENT_STRING_FIELDS
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks import open_warehouse
from tests.consumer.support import fast_config
from tests.support.wait import eventually

NASTY = [
    "Robert'); DROP TABLE page_views;--",
    "1' OR '1'='1",
    "'; SELECT pg_sleep(10); --",
    "$$; DELETE FROM page_views; $$",
    "`page_views`; TRUNCATE page_views",
    '"; DROP TABLE shardflow_checkpoints; --',
    "%s %(x)s ? $1 :name {0}",
    "\\N",
    "NULL",
    "back\\slash \\' \\\\ end\\",
    "tab\tnew\nline\rcr",
    "0x41; -- é ☃ 𝄞",
]
STRING_FIELDS = tuple(f for f in EVENT_STRING_FIELDS if f not in ("event_id", "type"))


def _event() -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": "ev'; DROP TABLE page_views; --", "type": "track"}
    for i, field in enumerate(STRING_FIELDS):
        event[field] = NASTY[i % len(NASTY)] + f" [{field}]"
    event["properties"] = {value: value for value in NASTY}
    event["context"] = {"nested": {"list": NASTY}}
    event["traits"] = {"'; DROP TABLE x; --": "\\N\t\n"}
    return event


BAD = {"event_id": "bad'); DELETE FROM shardflow_dead_letters; --", "url": 5, "title": "\\N\t'--"}
COLUMNS = ("event_id", "type", *STRING_FIELDS, "properties", "context", "traits")


def _read(url: str) -> tuple[list[tuple[Any, ...]], list[str]]:
    select = f"SELECT {', '.join(COLUMNS)} FROM page_views"
    dead = "SELECT payload FROM shardflow_dead_letters"
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = urlsplit(url).path[1:] if url.startswith("sqlite:////") else url[len("sqlite:///") :]
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute(select).fetchall(), [r[0] for r in db.execute(dead)]
        finally:
            db.close()
    if scheme == "mysql":
        import pymysql

        parts = urlsplit(url)
        conn = pymysql.connect(
            host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
            password=parts.password or "", database=parts.path.lstrip("/"),
        )  # fmt: skip
        try:
            with conn.cursor() as cur:
                cur.execute(select)
                rows = list(cur.fetchall())
                cur.execute(dead)
                return rows, [r[0] for r in cur.fetchall()]
        finally:
            conn.close()
    import asyncio

    import asyncpg

    async def fetch() -> tuple[list[tuple[Any, ...]], list[str]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(select)], [r[0] for r in await conn.fetch(dead)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/warehouse.db"
    return str(request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mysql_url"))


async def test_sql_in_every_field_is_stored_verbatim(tmp_path: Path, warehouse_url: str) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await stream.create(2)
    warehouse = open_warehouse(warehouse_url)
    config = IngestConfig(port=0, spool_dir=tmp_path / "spool", drain_timeout=5.0)
    sent = _event()
    try:
        async with (
            FrontEnd(config, stream) as front,
            Consumer(fast_config(), stream, warehouse),
            aiohttp.ClientSession() as client,
        ):
            async with client.post(f"http://127.0.0.1:{front.port}/v1/events", json=[sent, BAD]) as r:
                answer = await r.json()
                assert r.status == 202 and answer["accepted"] == 1, answer

            async def loaded() -> bool:
                try:
                    rows, dead = await asyncio_to_thread(_read, warehouse_url)
                except Exception:  # the consumer has not created the tables yet
                    return False
                return len(rows) == 1 and len(dead) == 1

            await eventually(loaded, timeout=30, interval=0.2, what="the event and the dead letter loaded")
    finally:
        await warehouse.close()
        await stream.close()
    rows, dead = await asyncio_to_thread(_read, warehouse_url)
    stored = dict(zip(COLUMNS, rows[0], strict=True))
    for field in ("event_id", "type", *STRING_FIELDS):
        assert stored[field] == sent[field], field
    for field in ("properties", "context", "traits"):
        value = stored[field]
        assert (orjson.loads(value) if isinstance(value, str | bytes) else value) == sent[field], field
    assert BAD["event_id"] in dead[0] and "\\\\N\\t'--" in dead[0], dead[0]


async def asyncio_to_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args)
