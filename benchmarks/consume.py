"""Consumer throughput: records/s from a pre-filled embedded stream into PostgreSQL, beside COPY.

    python -m benchmarks.consume [--quick] [--events N] [--warehouse postgresql|sqlite]

One stream (4 shards) is filled once; then, in interleaved rounds, a `Consumer` with 1, 2 and 4
enrichment workers loads it into an emptied warehouse, and the raw limit loads the same rows with
plain binary COPY (asyncpg `copy_records_to_table`, 10,000 rows per transaction, no stream, no
enrichment). A consumer round is timed from `start()` returning (pool start-up not counted) until
the sink has committed the last row, read from its `shardflow_sink_rows_total` counter in this
process (polling count(*) would take PostgreSQL CPU from the run); the rows are then counted in
the warehouse. Figures are medians of the rounds. `shardflow` is the best worker count's median.
The stream holds 100,000 events: with 40,000 a consumer round lasted ≈ 0.7 s, of which taking
the four leases and the first reads were a large share, and the ratio swung 0.48-0.62 between
runs (200,000 events in one round: 0.68).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import emit, error_line, figure, median, throwaway_postgres
from processor.event import encode_event, partition_key, validate_event
from processor.metrics import SINK_ROWS
from processor.streams.base import PutRecord
from processor.streams.embedded import EmbeddedStream
from shard_consumer.config import ConsumerConfig
from shard_consumer.consumer import Consumer
from shard_consumer.pool import process_records
from sinks import Warehouse, open_warehouse

NAME = "consume"
SHARDS = 4
WORKERS = (1, 2, 4)
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
TABLES = ("page_views", "shardflow_checkpoints", "shardflow_leases", "shardflow_dead_letters")


def events(count: int) -> list[PutRecord]:
    now = time.time()
    records = []
    for i in range(count):
        event = validate_event(
            {
                "event_id": f"bench-{i}",
                "url": f"https://shop.example/p/{i % 5000}?utm_source=news&utm_medium=email&utm_campaign=c{i % 7}",  # noqa: E501
                "referrer": "https://www.google.com/search?q=shoes",
                "title": "Product page",
                "anonymous_id": f"visitor-{i % 4999}",
                "user_agent": UA,
                "properties": {"price": i % 100, "currency": "EUR"},
            },
            received_at=now,
            ip="203.0.113.7",
        )
        records.append(PutRecord(encode_event(event), partition_key(event)))
    return records


async def fill(stream: EmbeddedStream, records: list[PutRecord]) -> None:
    await stream.create(SHARDS)
    for i in range(0, len(records), 500):
        results = await stream.put_records(records[i : i + 500])
        if not all(r.ok for r in results):
            raise RuntimeError("put failed while filling the stream")


async def _count(warehouse: Warehouse) -> int:
    result = await warehouse.query("SELECT count(*) FROM page_views")
    return int(result.rows[0][0])  # type: ignore[call-overload]


async def _empty(warehouse_uri: str) -> None:
    if warehouse_uri.startswith("sqlite"):
        import sqlite3

        from processor.uris import sqlite_path

        def clear() -> None:
            with sqlite3.connect(sqlite_path(warehouse_uri)) as conn:
                for table in TABLES:
                    conn.execute(f"DELETE FROM {table}")

        await asyncio.to_thread(clear)
        return
    import asyncpg

    conn = await asyncpg.connect(warehouse_uri, timeout=10)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    finally:
        await conn.close()


BATCH_RECORDS = 2000


async def consume_round(stream: EmbeddedStream, warehouse_uri: str, workers: int, total: int) -> float:
    """Records/s of one consumer with `workers` loading the whole stream into an empty warehouse."""
    warehouse = open_warehouse(warehouse_uri)
    await warehouse.start()
    await _empty(warehouse_uri)
    config = ConsumerConfig(
        lease_timeout=10.0,
        renew_interval=0.5,
        workers=workers,
        idle_poll_interval=0.05,
        batch_records=BATCH_RECORDS,
        max_batches_in_flight=4,
    )
    consumer = Consumer(config, stream, warehouse)
    before = _rows_committed()
    try:
        await consumer.start()
        started = time.perf_counter()
        # the sink's own commit counter, read in this process: polling count(*) on the warehouse
        # would take PostgreSQL CPU from the run it measures
        while _rows_committed() - before < total:  # noqa: ASYNC110 (a metric, not an event)
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        loaded = await _count(warehouse)
    finally:
        await consumer.stop()
        await warehouse.close()
    if loaded != total:
        raise RuntimeError(f"consume round loaded {loaded} rows, expected {total}")
    return total / elapsed


def _rows_committed() -> float:
    """The sink's row counter alone: `REGISTRY.get_sample_value` collects every metric (the
    process collector reads /proc) on each of the 100 polls a second, CPU taken from the run."""
    for metric in SINK_ROWS.collect():
        for sample in metric.samples:
            if sample.name == "shardflow_sink_rows_total":
                return sample.value
    return 0.0


def limit_rows(records: list[PutRecord]) -> list[tuple[Any, ...]]:
    """The rows the consumer makes of `records`, with `loaded_at`, ready for COPY."""
    processed = process_records(
        "shardId-000000000000", [str(i) for i in range(len(records))], [r.data for r in records], False
    )
    now = datetime.now(UTC)
    return [(*row, now) for row in processed.rows]


async def copy_round(warehouse_uri: str, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of plain binary COPY of `rows` into a copy of page_views, 10,000 per transaction."""
    import asyncpg

    from sinks.base import PAGE_VIEW_COLUMNS
    from sinks.schema import MIGRATIONS

    conn = await asyncpg.connect(warehouse_uri, timeout=10)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS copy_limit")
        await conn.execute("SET search_path TO copy_limit")
        for step in MIGRATIONS["postgresql"]:
            for statement in step:
                await conn.execute(statement)
        await conn.execute("TRUNCATE copy_limit.page_views")
        columns = [*PAGE_VIEW_COLUMNS, "loaded_at"]
        started = time.perf_counter()
        for i in range(0, len(rows), 10_000):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "page_views", schema_name="copy_limit", columns=columns, records=rows[i : i + 10_000]
                )
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def sqlite_limit_round(warehouse_uri: str, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of plain executemany into a bare page_views copy (the SQLite raw limit)."""
    import sqlite3

    from processor.uris import sqlite_path
    from sinks.base import PAGE_VIEW_COLUMNS

    path = sqlite_path(warehouse_uri).with_suffix(".limit.db")
    columns = [*PAGE_VIEW_COLUMNS, "loaded_at"]
    plain = [tuple(str(v) if isinstance(v, datetime) else v for v in row) for row in rows]

    def load() -> float:
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS page_views ({', '.join(columns)}, PRIMARY KEY (event_id))"
            )
            conn.execute("DELETE FROM page_views")
        started = time.perf_counter()
        with sqlite3.connect(path) as conn:
            marks = ", ".join("?" for _ in columns)
            for i in range(0, len(plain), 10_000):
                conn.executemany(f"INSERT INTO page_views VALUES ({marks})", plain[i : i + 10_000])
                conn.commit()
        return len(plain) / (time.perf_counter() - started)

    return await asyncio.to_thread(load)


async def run(total: int, rounds: int, kind: str) -> dict[str, Any]:
    records = events(total)
    rows = limit_rows(records)
    with tempfile.TemporaryDirectory(prefix="sf-bench-consume-") as tmp:
        stream = EmbeddedStream.from_uri(f"sqlite:///{tmp}/stream.db")
        try:
            await fill(stream, records)
            if kind == "sqlite":
                return await _measure(stream, f"sqlite:///{tmp}/warehouse.db", rows, total, rounds, kind)
            async with throwaway_postgres() as warehouse_uri:
                return await _measure(stream, warehouse_uri, rows, total, rounds, kind)
        finally:
            await stream.close()


async def _measure(
    stream: EmbeddedStream,
    warehouse_uri: str,
    rows: list[tuple[Any, ...]],
    total: int,
    rounds: int,
    kind: str,
) -> dict[str, Any]:
    speeds: dict[int, list[float]] = {w: [] for w in WORKERS}
    limits: list[float] = []
    for r in range(rounds):
        order = list(WORKERS) if r % 2 == 0 else list(reversed(WORKERS))
        for workers in order:
            speeds[workers].append(await consume_round(stream, warehouse_uri, workers, total))
            if kind == "sqlite":
                limits.append(await sqlite_limit_round(warehouse_uri, rows))
            else:
                limits.append(await copy_round(warehouse_uri, rows))
    medians = {w: median(v) for w, v in speeds.items()}
    best = max(medians, key=lambda w: medians[w])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return figure(
        NAME,
        medians[best],
        median(limits),
        rss_mb=round(rss + children, 1),
        warehouse=kind,
        events=total,
        rounds=rounds,
        best_workers=best,
        **{f"workers_{w}": round(v, 1) for w, v in medians.items()},
    )


def main() -> None:
    global BATCH_RECORDS, WORKERS
    parser = argparse.ArgumentParser(prog="python -m benchmarks.consume", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    parser.add_argument("--events", type=int, help="events in the stream (default 100000, quick 5000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warehouse", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--batch-records", type=int, default=2000, help="records per GetRecords")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args()
    BATCH_RECORDS, WORKERS = args.batch_records, tuple(args.workers)
    total = args.events or (5000 if args.quick else 100_000)
    try:
        line = asyncio.run(run(total, args.rounds, args.warehouse))
    except Exception as exc:  # the harness wants a line either way
        line = error_line(NAME, f"{type(exc).__name__}: {exc}")
    emit(line)


if __name__ == "__main__":
    main()
