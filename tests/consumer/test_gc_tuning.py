"""The collector's youngest generation is larger while a consumer runs, and only then.

Process-wide state, so counted: two consumers in one process, the default returns when the
last one stops. Embedded stream and SQLite warehouse, both real.
"""

from __future__ import annotations

import gc
from pathlib import Path

from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from shard_consumer.gc_tuning import CONSUMER_GEN0_THRESHOLD
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
        assert gc.get_threshold() == (max(before[0], CONSUMER_GEN0_THRESHOLD), *before[1:])
        await second.start()
        await first.stop()
        assert gc.get_threshold()[0] == max(before[0], CONSUMER_GEN0_THRESHOLD), "second still runs"
        await second.stop()
        await second.stop()  # idempotent: counted once
        assert gc.get_threshold() == before
    finally:
        await warehouse.close()
        await stream.close()
    never_started = Consumer(fast_config(), stream, warehouse)
    await never_started.stop()
    assert gc.get_threshold() == before
