"""The collector's youngest generation is larger while a consumer or a front end runs, and only then.

Process-wide state, so counted: two consumers in one process, the default returns when the
last one stops. Embedded stream and SQLite warehouse, both real.
"""

from __future__ import annotations

import gc
from pathlib import Path

from processor.gc_tuning import GEN0_THRESHOLD
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks.sqlite import SqliteWarehouse
from tests.consumer.support import fast_config


async def test_gen0_threshold_is_raised_while_any_consumer_runs(tmp_path: Path) -> None:
    before = gc.get_threshold()
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    warehouse = SqliteWarehouse.from_uri(f"sqlite:///{tmp_path}/warehouse.db")
    await stream.create(1)
    await warehouse.start()
    try:
        first = Consumer(fast_config(), stream, warehouse)
        second = Consumer(fast_config(), stream, warehouse)
        await first.start()
        assert gc.get_threshold() == (max(before[0], GEN0_THRESHOLD), *before[1:])
        await second.start()
        await first.stop()
        assert gc.get_threshold()[0] == max(before[0], GEN0_THRESHOLD), "second still runs"
        await second.stop()
        await second.stop()  # idempotent: counted once
        assert gc.get_threshold() == before
    finally:
        await warehouse.close()
        await stream.close()
    never_started = Consumer(fast_config(), stream, warehouse)
    await never_started.stop()
    assert gc.get_threshold() == before


async def test_gen0_threshold_is_raised_while_a_front_end_and_a_consumer_run(tmp_path: Path) -> None:
    before = gc.get_threshold()
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    warehouse = SqliteWarehouse.from_uri(f"sqlite:///{tmp_path}/warehouse.db")
    await stream.create(1)
    await warehouse.start()
    try:
        front = FrontEnd(IngestConfig(port=0, spool_dir=tmp_path / "spool"), stream)
        consumer = Consumer(fast_config(), stream, warehouse)
        await front.start()
        assert gc.get_threshold()[0] == max(before[0], GEN0_THRESHOLD)
        await consumer.start()
        await front.stop()
        assert gc.get_threshold()[0] == max(before[0], GEN0_THRESHOLD), "the consumer still runs"
        await consumer.stop()
        assert gc.get_threshold() == before
    finally:
        await warehouse.close()
        await stream.close()
