"""Several `shardflow consume` processes on one embedded stream and one warehouse: real signals.

Leases are short (1.5 s, renewed every 0.5 s) so that expiry-based cases finish in seconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from processor.streams.embedded import EmbeddedStream
from sinks import Warehouse, open_warehouse
from tests.consumer.processes import ConsumerProcess, live_owners
from tests.consumer.support import event_records, put_all, row_counts
from tests.support.wait import eventually

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    workdir: Path
    stream_uri: str
    warehouse_uri: str
    stream: EmbeddedStream
    warehouse: Warehouse
    procs: list[ConsumerProcess]

    def spawn(self, name: str, **options: str) -> ConsumerProcess:
        proc = ConsumerProcess(self.workdir, self.stream_uri, self.warehouse_uri, name, **options)
        self.procs.append(proc)
        return proc

    async def owners(self) -> dict[str, int]:
        leases = await self.warehouse.list_leases(self.stream.name)
        return dict(live_owners(leases, await self.warehouse.now()))

    async def wait_rows(self, expected: int, timeout: float = 60.0) -> None:
        async def loaded() -> bool:
            return await row_counts(self.warehouse) == (expected, expected)

        try:
            await eventually(loaded, timeout=timeout, interval=0.2, what=f"{expected} rows")
        except AssertionError:
            raise AssertionError(
                f"rows={await row_counts(self.warehouse)}; logs:\n"
                + "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.procs)
            ) from None


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/warehouse.db"
    if importlib.util.find_spec("sinks.postgres") is None:
        pytest.skip("sinks/postgres.py is not there yet")
    if request.param == "mysql":
        return str(request.getfixturevalue("mysql_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def setup(tmp_path: Path, warehouse_uri: str) -> AsyncIterator[Setup]:
    stream_uri = f"sqlite:///{tmp_path}/stream.db"
    stream = EmbeddedStream.from_uri(stream_uri)
    warehouse = open_warehouse(warehouse_uri)
    await warehouse.start()
    state = Setup(tmp_path, stream_uri, warehouse_uri, stream, warehouse, [])
    try:
        yield state
    finally:
        for proc in state.procs:
            proc.stop()
        await warehouse.close()
        await stream.close()


def _spread(owners: dict[str, int]) -> list[int]:
    return sorted(owners.values())


async def test_fair_spread_join_and_graceful_handoff(setup: Setup) -> None:
    await setup.stream.create(8)
    await put_all(setup.stream, event_records(3000, "a"))
    first = [setup.spawn(f"c{i}") for i in range(3)]

    async def spread(expected: list[int]) -> dict[str, int] | None:
        owners = await setup.owners()
        return owners if _spread(owners) == expected else None

    await eventually(lambda: spread([2, 3, 3]), timeout=30, what="3/3/2")
    await setup.wait_rows(3000)

    fourth = setup.spawn("c3")
    await put_all(setup.stream, event_records(3000, "b"))
    owners = await eventually(lambda: spread([2, 2, 2, 2]), timeout=30, what="2/2/2/2")
    assert "c3" in owners
    await setup.wait_rows(6000)

    victim = first[0]
    leases = await setup.warehouse.list_leases(setup.stream.name)
    victim_shards = {lease.shard_id for lease in leases if lease.owner == "c0"}
    assert victim_shards
    await put_all(setup.stream, event_records(3000, "c"))
    started = time.monotonic()
    victim.signal(signal.SIGTERM)

    async def moved() -> bool:
        leases = await setup.warehouse.list_leases(setup.stream.name)
        now = await setup.warehouse.now()
        return all(
            lease.owner not in (None, "c0") and lease.expires_at > now
            for lease in leases
            if lease.shard_id in victim_shards
        )

    await eventually(moved, timeout=10, interval=0.05, what="c0's shards taken over")
    took = time.monotonic() - started
    assert took < 2.5, f"hand-off took {took:.2f}s (the lease timeout is 1.5 s: expiry, not hand-off)"
    assert victim.wait(10) == 0
    assert _spread(await setup.owners()) == [2, 3, 3]
    await setup.wait_rows(9000)
    assert fourth.proc.poll() is None


async def test_sigkill_mid_batch_loads_exactly_once(setup: Setup) -> None:
    await setup.stream.create(4)
    total = 50_000
    records = event_records(total, "k")
    doomed = setup.spawn("doomed")
    survivor = setup.spawn("survivor")
    await eventually(lambda: _spread_is(setup, [2, 2]), timeout=30, what="both consumers hold shards")
    producer = asyncio.create_task(put_all(setup.stream, records, chunk=500, pause=0.05))

    async def some_loaded() -> bool:
        rows, _ = await row_counts(setup.warehouse)
        return rows > 2000

    await eventually(some_loaded, timeout=30, what="a first part loaded")
    assert not producer.done(), "the kill must happen while events flow"
    doomed.signal(signal.SIGKILL)
    await producer
    await setup.wait_rows(total, timeout=90)
    assert survivor.proc.poll() is None


@pytest.mark.parametrize("warehouse_uri", ["sqlite", "postgresql", "mysql"], indirect=True)
async def test_sigstop_past_lease_timeout_then_stale_commit_refused(setup: Setup) -> None:
    """A consumer frozen mid-load never blocks the takeover, and its late commit is refused.

    Where the stop lands is chance: mid-load it holds no lock anyone needs (rows are staged
    before the lease row is locked); inside the short locked window the server ends its idle
    session within the sink's idle timeout. test_fencing.py pins the stale commit exactly.
    """
    if setup.warehouse_uri.startswith("sqlite"):
        # A process stopped inside a write transaction keeps SQLite's single write lock, so no
        # other consumer can take the lease until it resumes: SQLite's limit, not the fence's.
        pytest.skip("SQLite: a stopped writer holds the database write lock")
    await setup.stream.create(2)
    stale = setup.spawn("stale")
    await eventually(lambda: _has(setup, "stale", 2), timeout=30, what="stale holds both shards")
    producer = asyncio.create_task(put_all(setup.stream, event_records(20_000, "s"), chunk=100))

    async def flowing() -> bool:
        return (await row_counts(setup.warehouse))[0] > 1000

    await eventually(flowing, timeout=30, what="events flowing")
    stale.signal(signal.SIGSTOP)
    fresh = setup.spawn("fresh")
    await eventually(lambda: _has(setup, "fresh", 2), timeout=15, what="fresh takes both shards after expiry")
    await producer
    stale.signal(signal.SIGCONT)
    await setup.wait_rows(20_000)

    async def dropped() -> bool:
        return "lease lost" in stale.output()

    await eventually(dropped, timeout=10, what="the resumed consumer drops its lost leases")
    assert fresh.proc.poll() is None
    assert stale.proc.poll() is None, "the stale consumer drops the shards and carries on"


async def _spread_is(setup: Setup, spread: list[int]) -> bool:
    return _spread(await setup.owners()) == spread


async def _has(setup: Setup, owner: str, count: int) -> bool:
    return (await setup.owners()).get(owner) == count


async def test_split_and_merge_while_events_flow(setup: Setup) -> None:
    await setup.stream.create(4)
    setup.spawn("r1")
    setup.spawn("r2")
    await eventually(lambda: _spread_is(setup, [2, 2]), timeout=30, what="both consumers hold shards")
    records = event_records(20_000, "m")
    producer = asyncio.create_task(put_all(setup.stream, records[:10_000], chunk=100, pause=0.02))

    async def flowing() -> bool:
        return (await row_counts(setup.warehouse))[0] > 500

    await eventually(flowing, timeout=30, what="events flowing")
    shards = sorted(s.shard_id for s in (await setup.stream.describe()).open_shards)
    await setup.stream.split_shard(shards[0])
    await setup.stream.merge_shards(shards[2], shards[3])
    await producer
    await put_all(setup.stream, records[10_000:], chunk=100, pause=0.01)
    await setup.wait_rows(20_000, timeout=60)

    description = await setup.stream.describe()
    children = [s for s in description.shards if s.parent_shard_ids]
    assert len(children) == 3
    stored = await setup.warehouse.checkpoints(setup.stream.name)
    checkpoints = {c.shard_id: c.sequence_number for c in stored}
    for parent in (shards[0], shards[2], shards[3]):
        assert checkpoints[parent] == "SHARD_END"
    for child in children:
        first_child = await setup.warehouse.query(
            f"SELECT min(loaded_at), count(*) FROM page_views WHERE shard_id = '{child.shard_id}'"
        )
        child_start, child_rows = first_child.rows[0]
        assert child_rows, f"child {child.shard_id} got events"
        for parent in child.parent_shard_ids:
            last_parent = await setup.warehouse.query(
                f"SELECT max(loaded_at) FROM page_views WHERE shard_id = '{parent}'"
            )
            assert str(last_parent.rows[0][0]) <= str(child_start), "a child started before its parent ended"
