"""A consumer frozen past its lease timeout, then resumed: its stale commit is refused.

The freeze is a stand-in for SIGSTOP or a long GC pause that lands exactly between reading a
batch and committing it (a fake, because a real stop cannot be aimed at that instant; the
SIGSTOP process test covers the real signal). Every warehouse call of the frozen consumer waits
at a gate, so it neither renews nor commits while another consumer takes the shards over.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from processor.errors import LeaseLost
from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks import Warehouse, open_warehouse
from tests.consumer.support import event_records, fast_config, put_all, row_counts
from tests.support.wait import eventually


class Frozen:
    """Delegates to a warehouse; while frozen, every call waits before it reaches the database."""

    def __init__(self, inner: Warehouse) -> None:
        self._inner = inner
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.commits_thawed = asyncio.Event()
        self.commits_thawed.set()
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def gated(*args: Any, **kwargs: Any) -> Any:
            await (self.commits_thawed if name == "write_batch" else self.thawed).wait()
            try:
                return await attr(*args, **kwargs)
            except LeaseLost:
                self.refused += 1
                raise

        return gated


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/warehouse.db"
    return str(request.getfixturevalue("postgres_url"))


async def test_stale_commit_after_freeze_is_refused(tmp_path: Path, warehouse_uri: str) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await stream.create(2)
    shared = open_warehouse(warehouse_uri)
    frozen = Frozen(open_warehouse(warehouse_uri))
    await shared.start()
    total = 12_000
    records = event_records(total, "f")
    stale = Consumer(fast_config(consumer_id="stale"), stream, cast(Warehouse, frozen))
    fresh = Consumer(fast_config(consumer_id="fresh"), stream, shared)
    try:
        await stale.start()
        await eventually(lambda: _value(lambda: len(stale.held_shards) == 2), what="stale holds both")
        await put_all(stream, records[:4000])
        await eventually(lambda: _rows_over(shared, 1000), what="stale loading")
        frozen.thawed.clear()
        frozen.commits_thawed.clear()
        await fresh.start()
        await put_all(stream, records[4000:8000])
        await eventually(lambda: _value(lambda: len(fresh.held_shards) == 2), timeout=20, what="takeover")
        await put_all(stream, records[8000:])
        await eventually(lambda: _rows_exact(shared, total), timeout=30, what="fresh loads the rest")
        lost_before = _lost()
        # the commit that was waiting goes first, as it would after SIGCONT if it was on the wire
        frozen.commits_thawed.set()
        await eventually(lambda: _value(lambda: frozen.refused >= 1), timeout=10, what="stale commit refused")
        frozen.thawed.set()
        await eventually(lambda: _value(lambda: _lost() >= lost_before + 2), timeout=20, what="stale drops")
        assert await row_counts(shared) == (total, total)
    finally:
        frozen.thawed.set()
        frozen.commits_thawed.set()
        await stale.stop()
        await fresh.stop()
        await frozen.close()
        await shared.close()
        await stream.close()


def _lost() -> float:
    return REGISTRY.get_sample_value("shardflow_lease_events_total", {"event": "lost"}) or 0.0


async def _value(check: Callable[[], bool]) -> bool:
    return check()


async def _rows_over(warehouse: Warehouse, count: int) -> bool:
    return (await row_counts(warehouse))[0] > count


async def _rows_exact(warehouse: Warehouse, count: int) -> bool:
    return await row_counts(warehouse) == (count, count)
