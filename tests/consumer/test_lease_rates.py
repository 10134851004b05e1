"""A consumer's lease manager measures records/s per held shard and publishes it with renewals.

Real embedded stream and real SQLite warehouse; the reads are counted where the shard readers
count them (`shardflow_consumer_records`), bumped here by hand instead of by running readers.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from processor.metrics import CONSUMER_RECORDS
from processor.streams.embedded import EmbeddedStream
from shard_consumer.leases import LeaseManager
from sinks import open_warehouse


async def test_rates_are_measured_published_and_inherited(tmp_path: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await stream.create(2)
    warehouse = open_warehouse(f"sqlite:///{tmp_path}/warehouse.db")
    await warehouse.start()
    try:
        first = LeaseManager(warehouse, stream, "first", lease_timeout=10.0, rng=random.Random(1))
        await first.sync_shards()
        assert len(await first.balance()) == 2
        hot, cold = sorted(first.held)
        await first.renew()  # publishes 0 for both: nothing read yet
        await asyncio.sleep(0.2)
        CONSUMER_RECORDS.labels(hot).inc(20_000)
        await first.renew()
        published = {
            lease.shard_id: lease.records_per_second for lease in await warehouse.list_leases(stream.name)
        }
        assert published[cold] == 0.0
        # 20,000 records in ~0.2 s is ~100,000/s; the EWMA (30 s time constant) moved a little way
        assert 50 < published[hot] < 20_000

        # the next owner starts from the published rate rather than from zero
        await first.release(hot)
        second = LeaseManager(warehouse, stream, "second", lease_timeout=10.0, rng=random.Random(2))
        assert [lease.shard_id for lease in await second.balance()] == [hot]
        assert abs(second.rates()[hot] - published[hot]) < published[hot] * 0.05
        await second.renew()
        await first.renew()
        after = {
            lease.shard_id: lease.records_per_second for lease in await warehouse.list_leases(stream.name)
        }
        assert abs(after[hot] - published[hot]) < published[hot] * 0.05 and after[cold] == 0.0
        assert first.rates() == {cold: 0.0}
    finally:
        await warehouse.close()
        await stream.close()


async def test_an_earlier_lease_of_a_shard_cannot_release_or_drop_the_one_held_now(tmp_path: Path) -> None:
    """A shard task of an old lease ending late leaves the re-taken lease alone."""
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await stream.create(1)
    warehouse = open_warehouse(f"sqlite:///{tmp_path}/warehouse.db")
    await warehouse.start()
    try:
        leases = LeaseManager(warehouse, stream, "me", lease_timeout=10.0, rng=random.Random(3))
        await leases.sync_shards()
        (old,) = await leases.balance()
        await leases.release(old.shard_id, old.lease_counter)
        (new,) = await leases.balance()
        assert new.shard_id == old.shard_id and new.lease_counter > old.lease_counter

        await leases.release(old.shard_id, old.lease_counter)
        leases.drop(old.shard_id, old.lease_counter)

        assert leases.held[new.shard_id].lease_counter == new.lease_counter
        (stored,) = await warehouse.list_leases(stream.name)
        assert (stored.owner, stored.lease_counter) == ("me", new.lease_counter)
        await leases.release(new.shard_id, new.lease_counter)
        (stored,) = await warehouse.list_leases(stream.name)
        assert stored.owner is None and new.shard_id not in leases.held
    finally:
        await warehouse.close()
        await stream.close()
