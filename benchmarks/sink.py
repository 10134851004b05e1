"""Sink throughput: rows/s a warehouse loads in 10,000-row batches, checkpoint and fence included,
beside the raw limit of the same rows in the same run.

    python -m benchmarks.sink [--quick] [--rounds N] [--batches N]

- `sink_postgres`: `PostgresWarehouse.write_batch` vs plain binary `COPY` (asyncpg
  `copy_records_to_table`) of the same rows into an identical table (same primary key and
  indexes) in one transaction.
- `sink_mysql`: `MysqlWarehouse.write_batch` vs plain `LOAD DATA LOCAL INFILE` of the same rows
  (the same tab-separated file writer, timed too: the rows have to become a file either way) into
  an identical table; peer `insert_ignore`: aiomysql multi-row `INSERT IGNORE` of the same rows,
  the other way the issue allows (why the sink uses LOAD DATA); left out with --quick.

Contenders alternate within each round (A B, then B A) and the figure is the median of the
rounds. Every batch holds rows never seen before, so each one really inserts 10,000 rows (on
PostgreSQL that is the sink's direct COPY path; a batch with an event_id already loaded takes its
merge path, staging + ON CONFLICT, not measured here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from benchmarks.common import (
    POSTGRES_DSN,
    emit,
    error_line,
    figure,
    interleaved_async,
    throwaway_postgres,
)

BATCH_ROWS = 10_000
MYSQL_DSN = os.environ.get("SHARDFLOW_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
STREAM = "bench"
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
SHARD = "shardId-000000000000"


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Rows:
    """Fresh, realistic rows: every call returns a batch of ids never used before."""

    def __init__(self) -> None:
        self.next_id = 0
        self.base = datetime.now(UTC)

    def batch(self, n: int = BATCH_ROWS) -> list[object]:
        from sinks.base import PageView

        rows: list[object] = []
        for _ in range(n):
            i = self.next_id
            self.next_id += 1
            ts = self.base + timedelta(milliseconds=i)
            rows.append(
                PageView(
                    event_id=f"{secrets.token_hex(4)}-{i:010d}",
                    type="page",
                    ts=ts,
                    received_at=ts,
                    url=f"https://shop.example.com/products/{i % 5000}?utm_source=news&utm_medium=email",
                    referrer="https://www.google.com/",
                    title=f"Product {i % 5000} — the best one 🎉",
                    user_id=f"user-{i % 20000}" if i % 3 == 0 else None,
                    anonymous_id=f"anon-{i % 50000:08d}",
                    session_id=f"sess-{i % 9000:06d}",
                    user_agent=USER_AGENT,
                    ip="203.0.113.0",
                    name=None,
                    properties=f'{{"price": {i % 997}, "currency": "EUR", "tags": ["a", "b"]}}',
                    context='{"locale": "en-GB", "library": {"name": "analytics.js"}}',
                    traits=None,
                    host="shop.example.com",
                    path=f"/products/{i % 5000}",
                    utm_source="news",
                    utm_medium="email",
                    utm_campaign=None,
                    referrer_host="www.google.com",
                    browser="Chrome",
                    os="Windows",
                    device="desktop",
                    is_bot=False,
                    shard_id=SHARD,
                    sequence_number=str(
                        49_650_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000 + i
                    ),
                )
            )
        return rows


async def _sink_contender(
    url: str, rows: Rows, batches: int
) -> tuple[Callable[[], Awaitable[float]], object]:
    from processor.streams.base import ShardInfo
    from sinks import Batch, Fence, open_warehouse

    wh = open_warehouse(url)
    await wh.start()
    await wh.create_leases(STREAM, [ShardInfo(SHARD, 0, 2**128 - 1)])
    lease = await wh.take_lease(STREAM, SHARD, "bench", 0, 3600)
    assert lease is not None
    fence = Fence("bench", lease.lease_counter)

    async def run() -> float:
        work = [rows.batch() for _ in range(batches)]
        started = time.perf_counter()
        for batch_rows in work:
            last = batch_rows[-1].sequence_number  # type: ignore[attr-defined]
            new = await wh.write_batch(Batch(STREAM, SHARD, batch_rows, [], last, fence))  # type: ignore[arg-type]
            assert new == len(batch_rows), (new, len(batch_rows))
        return batches * BATCH_ROWS / (time.perf_counter() - started)

    return run, wh


async def bench_postgres(rounds: int, batches: int) -> dict[str, object]:
    import asyncpg

    from sinks.base import PAGE_VIEW_COLUMNS

    rows = Rows()
    async with throwaway_postgres(POSTGRES_DSN) as url:
        sink, wh = await _sink_contender(url, rows, batches)
        raw = await asyncpg.connect(url, timeout=10)
        await raw.execute("CREATE TABLE raw_page_views (LIKE page_views INCLUDING ALL)")

        async def copy() -> float:
            work = [rows.batch() for _ in range(batches)]
            started = time.perf_counter()
            for batch_rows in work:
                async with raw.transaction():
                    await raw.copy_records_to_table(
                        "raw_page_views", records=batch_rows, columns=PAGE_VIEW_COLUMNS
                    )
            return batches * BATCH_ROWS / (time.perf_counter() - started)

        try:
            result = await interleaved_async({"shardflow": sink, "copy": copy}, rounds)
        finally:
            await raw.close()
            await wh.close()  # type: ignore[attr-defined]
    return figure(
        "sink_postgres",
        result["shardflow"],
        result["copy"],
        rss_mb=_peak_rss_mb(),
        rows_per_batch=BATCH_ROWS,
        batches_per_round=batches,
        rounds=rounds,
        limit_is="plain binary COPY of the same rows into an identical table, one transaction per batch",
    )


async def bench_mysql(rounds: int, batches: int, with_peer: bool = True) -> dict[str, object]:
    import aiomysql

    from sinks.base import PAGE_VIEW_COLUMNS
    from sinks.mysql import _remove, load_data_files, load_data_sql

    parts = urlsplit(MYSQL_DSN)
    connect = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "charset": "utf8mb4",
        "local_infile": True,
        "autocommit": False,
    }
    name = "sfb_" + secrets.token_hex(6)
    admin = await aiomysql.connect(**connect)
    async with admin.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    url = f"{parts.scheme}://{parts.netloc}/{name}"
    rows = Rows()
    raw = None
    wh = None
    try:
        sink, wh = await _sink_contender(url, rows, batches)
        raw = await aiomysql.connect(db=name, **connect)
        async with raw.cursor() as cur:
            await cur.execute("SET time_zone = '+00:00'")
            await cur.execute("CREATE TABLE raw_page_views LIKE page_views")
            await cur.execute("CREATE TABLE raw_insert_page_views LIKE page_views")
        await raw.commit()

        async def load_data() -> float:
            work = [rows.batch() for _ in range(batches)]
            started = time.perf_counter()
            for batch_rows in work:
                paths = await asyncio.to_thread(load_data_files, batch_rows)  # type: ignore[arg-type]
                try:
                    async with raw.cursor() as cur:
                        for path in paths:
                            await cur.execute(load_data_sql("raw_page_views"), (path,))
                    await raw.commit()
                finally:
                    await asyncio.to_thread(_remove, paths)
            return batches * BATCH_ROWS / (time.perf_counter() - started)

        columns = ", ".join(PAGE_VIEW_COLUMNS)
        marks = "(" + ", ".join(["%s"] * len(PAGE_VIEW_COLUMNS)) + ")"

        async def insert_ignore() -> float:
            work = [rows.batch()]  # one batch is enough for a per-row rate this slow
            started = time.perf_counter()
            for batch_rows in work:
                async with raw.cursor() as cur:
                    for start in range(0, len(batch_rows), 1000):
                        chunk = batch_rows[start : start + 1000]
                        await cur.executemany(
                            f"INSERT IGNORE INTO raw_insert_page_views ({columns}) VALUES {marks}",
                            [tuple(r) for r in chunk],  # type: ignore[arg-type]
                        )
                await raw.commit()
            return BATCH_ROWS / (time.perf_counter() - started)

        contenders = {"shardflow": sink, "load_data": load_data}
        if with_peer:
            contenders["insert_ignore"] = insert_ignore
        result = await interleaved_async(contenders, rounds)
    finally:
        if raw is not None:
            raw.close()
        if wh is not None:
            await wh.close()  # type: ignore[attr-defined]
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
    return figure(
        "sink_mysql",
        result["shardflow"],
        result["load_data"],
        peers={"insert_ignore": result["insert_ignore"]} if with_peer else None,
        rss_mb=_peak_rss_mb(),
        rows_per_batch=BATCH_ROWS,
        batches_per_round=batches,
        rounds=rounds,
        limit_is="plain LOAD DATA LOCAL INFILE of the same rows (file writing included) "
        "into an identical table",
    )


async def main_async(args: argparse.Namespace) -> None:
    rounds = args.rounds or 3
    batches = args.batches or (1 if args.quick else 2)
    try:
        emit(await bench_postgres(rounds, batches))
    except Exception as exc:  # one line per figure owed, whatever went wrong
        emit(error_line("sink_postgres", f"{type(exc).__name__}: {exc}"))
    try:
        emit(await bench_mysql(rounds, batches, with_peer=not args.quick))
    except Exception as exc:
        emit(error_line("sink_mysql", f"{type(exc).__name__}: {exc}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batches")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--batches", type=int, default=0, help="10,000-row batches per round")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
