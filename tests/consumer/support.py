"""Helpers for consumer tests: pre-filled streams, warehouse counts, consumer configs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from processor.event import encode_event, partition_key, validate_event
from processor.streams.base import PutRecord, Stream
from shard_consumer.config import ConsumerConfig
from sinks.base import Warehouse


def event_records(count: int, prefix: str = "e", start: int = 0) -> list[PutRecord]:
    """`count` valid page views with ids `{prefix}-{i}`, spread over many partition keys."""
    now = time.time()
    records = []
    for i in range(start, start + count):
        event = validate_event(
            {
                "event_id": f"{prefix}-{i}",
                "url": f"https://shop.example/p/{i}?utm_source=news",
                "anonymous_id": f"visitor-{i % 997}",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36",
            },
            received_at=now,
            ip="10.0.0.1",
        )
        records.append(PutRecord(encode_event(event), partition_key(event)))
    return records


async def put_all(stream: Stream, records: Sequence[PutRecord], chunk: int = 500, pause: float = 0.0) -> None:
    """Append every record (retrying per-record failures) so none is missing from the stream.

    `pause` spaces the chunks out, so that events keep flowing while a test does something else.
    """
    for i in range(0, len(records), chunk):
        if i and pause:
            await asyncio.sleep(pause)
        pending = list(records[i : i + chunk])
        while pending:
            results = await stream.put_records(pending)
            pending = [r for r, res in zip(pending, results, strict=True) if not res.ok]


async def row_counts(warehouse: Warehouse) -> tuple[int, int]:
    """(rows, distinct event ids) in page_views."""
    result = await warehouse.query("SELECT count(*), count(DISTINCT event_id) FROM page_views")
    rows, distinct = result.rows[0]
    return int(rows), int(distinct)  # type: ignore[call-overload]


def fast_config(**overrides: object) -> ConsumerConfig:
    """Short leases and polls so the tests converge in seconds."""
    options: dict[str, object] = {
        "lease_timeout": 1.5,
        "renew_interval": 0.3,
        "workers": 1,
        "idle_poll_interval": 0.05,
        "shard_sync_interval": 0.5,
        "batch_records": 1000,
        "shutdown_timeout": 10.0,
    }
    options.update(overrides)
    return ConsumerConfig(**options)  # type: ignore[arg-type]
