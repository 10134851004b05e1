"""Shard read rates ride on lease renewals, on SQLite, real PostgreSQL and real MariaDB alike."""

from __future__ import annotations

import pytest

from sinks import Warehouse, open_warehouse
from tests.sinks.test_warehouse import SHARD, SHARDS, STREAM

OTHER = "shardId-000000000001"


async def rates(wh: Warehouse) -> dict[str, float]:
    return {lease.shard_id: lease.records_per_second for lease in await wh.list_leases(STREAM)}


async def test_rates_round_trip_and_outlive_a_change_of_owner(warehouse: Warehouse) -> None:
    await warehouse.create_leases(STREAM, SHARDS)
    assert set((await rates(warehouse)).values()) == {0.0}
    a = await warehouse.take_lease(STREAM, SHARD, "c1", 0, 10.0)
    b = await warehouse.take_lease(STREAM, OTHER, "c1", 0, 10.0)
    assert a is not None and b is not None

    renewed = await warehouse.renew_leases(STREAM, "c1", {SHARD: 1, OTHER: 1}, 10.0, {SHARD: 1234.5})
    assert renewed[SHARD].records_per_second == 1234.5
    assert renewed[OTHER].records_per_second == 0.0
    assert (await rates(warehouse))[SHARD] == 1234.5

    # a renewal without rates (an older consumer) keeps what is stored
    renewed = await warehouse.renew_leases(STREAM, "c1", {SHARD: 1, OTHER: 1}, 10.0)
    assert renewed[SHARD].records_per_second == 1234.5
    renewed = await warehouse.renew_leases(
        STREAM, "c1", {SHARD: 1, OTHER: 1}, 10.0, {SHARD: 7.0, OTHER: 3.25}
    )
    assert (renewed[SHARD].records_per_second, renewed[OTHER].records_per_second) == (7.0, 3.25)

    # a stale owner's renewal stores nothing; the rate stays with the shard for the next owner
    assert await warehouse.release_lease(STREAM, SHARD, "c1", 1)
    assert await warehouse.renew_leases(STREAM, "c1", {SHARD: 1}, 10.0, {SHARD: 99.0}) == {}
    taken = await warehouse.take_lease(STREAM, SHARD, "c2", 2, 10.0)
    assert taken is not None and taken.records_per_second == 7.0


async def test_a_database_from_before_rates_upgrades_in_place(
    warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sinks import schema

    held = (
        "INSERT INTO shardflow_leases (stream, shard_id, owner, lease_counter, expires_at, parent_shard_ids) "
        f"VALUES ('{STREAM}', '{SHARD}', 'c1', 1, 4102444800, '[]')"
    )
    monkeypatch.setattr(
        schema, "MIGRATIONS", {d: (steps[0], (*steps[1], held)) for d, steps in schema.MIGRATIONS.items()}
    )
    old = open_warehouse(warehouse_url)
    await old.start()
    await old.close()
    monkeypatch.undo()

    new = open_warehouse(warehouse_url)
    await new.start()
    try:
        [lease] = await new.list_leases(STREAM)
        assert (lease.owner, lease.lease_counter, lease.records_per_second) == ("c1", 1, 0.0)
        renewed = await new.renew_leases(STREAM, "c1", {SHARD: 1}, 10.0, {SHARD: 50.0})
        assert renewed[SHARD].records_per_second == 50.0
    finally:
        await new.close()
