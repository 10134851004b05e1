"""Dead letters exactly once: a letter delivered twice (a spool re-send, a replayed batch) is one
row, on SQLite, real PostgreSQL and real MariaDB; a database from before the key upgrades in place."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from processor.event import decode_record, encode_dead_letter
from shard_consumer.pool import dead_letter_key, process_records
from sinks import Batch, DeadLetter, Fence, Warehouse, open_warehouse
from sinks.schema import LATEST_VERSION
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take


async def letter_rows(wh: Warehouse) -> list[tuple[object, ...]]:
    result = await wh.query(
        "SELECT stage, reason, payload, dedup_key FROM shardflow_dead_letters ORDER BY id"
    )
    return result.rows


def filed(stage: str) -> float:
    return REGISTRY.get_sample_value("shardflow_dead_letters_total", {"stage": stage}) or 0.0


async def test_the_same_letter_in_two_batches_is_one_row(warehouse: Warehouse) -> None:
    fence = await take(warehouse)
    ingest = DeadLetter("ingest", "body is not JSON", "{oops", SHARD, "1", key="0193-ingest-id")
    transform = DeadLetter("transform", "ValueError: x", "{}", SHARD, "2", key="transform:s:2:0")
    before = filed("ingest"), filed("transform")
    await warehouse.write_batch(Batch(STREAM, SHARD, [], [ingest, transform], "2", fence))
    # the replay after a lost commit, and the spool's re-send of the ingest letter at a new position
    resent = DeadLetter("ingest", "body is not JSON", "{oops", SHARD, "9", key="0193-ingest-id")
    await warehouse.write_batch(Batch(STREAM, SHARD, [], [transform, resent, resent], "9", fence))
    assert await letter_rows(warehouse) == [
        ("ingest", "body is not JSON", "{oops", "0193-ingest-id"),
        ("transform", "ValueError: x", "{}", "transform:s:2:0"),
    ]
    assert (filed("ingest") - before[0], filed("transform") - before[1]) == (1, 1)
    assert await warehouse.get_checkpoint(STREAM, SHARD) == "9"


async def test_letters_without_a_key_are_all_kept(warehouse: Warehouse) -> None:
    """NULL keys never collide: letters written by an older consumer keep their old behaviour."""
    fence = await take(warehouse)
    old = DeadLetter("ingest", "url: must be a string, not a number", '{"url": 1}')
    await warehouse.write_batch(Batch(STREAM, SHARD, [], [old, old], "1", fence))
    await warehouse.write_batch(Batch(STREAM, SHARD, [], [old], "2", fence))
    assert len(await letter_rows(warehouse)) == 3
    [stored, *_] = await warehouse.list_dead_letters()
    assert (stored.stage, stored.payload) == ("ingest", '{"url": 1}')


async def test_a_replayed_batch_of_records_files_each_letter_once(warehouse: Warehouse) -> None:
    """The consumer's own processing, run twice over the same records, gives the same keys."""
    records = [
        encode_dead_letter("ingest", "body is not JSON", b"{oops"),
        b'{"dead_letter": {"stage": "ingest", "reason": "old record", "payload": "x"}}',
        b"\xff not json",
    ]
    seqs = ["100", "101", "102"]
    fence = await take(warehouse)
    first = process_records(SHARD, seqs, records, False, [0, 0, 3])
    again = process_records(SHARD, seqs, records, False, [0, 0, 3])
    assert first == again
    letter = decode_record(records[0])
    assert not isinstance(letter, dict) and letter.id is not None
    assert [d.key for d in first.dead_letters] == [
        letter.id,
        dead_letter_key("ingest", SHARD, "101", 0),
        dead_letter_key("decode", SHARD, "102", 3),
    ]
    await warehouse.write_batch(Batch(STREAM, SHARD, [], first.dead_letters, "102", fence))
    await warehouse.write_batch(Batch(STREAM, SHARD, [], again.dead_letters, "102", fence))
    assert [row[0] for row in await letter_rows(warehouse)] == ["ingest", "ingest", "decode"]


async def test_migration_from_the_previous_version_adds_the_key_and_keeps_rows(
    warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sinks import schema

    # a database made by the release before the key: its one step, and two letters filed the way
    # it filed them (today's writer names dedup_key, which that schema lacks)
    legacy = (
        "INSERT INTO shardflow_dead_letters (stage, reason, payload, shard_id, sequence_number, created_at) "
        "VALUES ('ingest', 'body is not JSON', '{oops', NULL, NULL, '2026-11-28 12:00:00')"
    )
    # the lease it held, inserted as that release stored it (today's lease reads name later columns)
    held = (
        "INSERT INTO shardflow_leases (stream, shard_id, owner, lease_counter, expires_at, parent_shard_ids) "
        f"VALUES ('{STREAM}', '{SHARD}', 'c1', 1, 4102444800, '[]')"
    )
    monkeypatch.setattr(
        schema,
        "MIGRATIONS",
        {d: ((*steps[0], legacy, legacy, held),) for d, steps in schema.MIGRATIONS.items()},
    )
    old = open_warehouse(warehouse_url)
    await old.start()
    fence = Fence("c1", 1)
    await old.write_batch(Batch(STREAM, SHARD, [make_row(1)], [], "1", fence))
    await old.close()
    monkeypatch.undo()

    for _ in range(2):  # the second start finds nothing to do
        new = open_warehouse(warehouse_url)
        await new.start()
        versions = await new.query("SELECT version FROM shardflow_schema_version ORDER BY version")
        assert [int(str(v[0])) for v in versions.rows] == list(range(1, LATEST_VERSION + 1))
        await new.close()

    new = open_warehouse(warehouse_url)
    await new.start()
    try:
        assert await letter_rows(new) == [("ingest", "body is not JSON", "{oops", None)] * 2
        assert await count(new) == 1
        keyed = DeadLetter("ingest", "body is not JSON", "{oops", SHARD, "2", key="k-1")
        await new.write_batch(Batch(STREAM, SHARD, [], [keyed], "2", fence))
        await new.write_batch(Batch(STREAM, SHARD, [], [keyed], "3", fence))
        assert [row[3] for row in await letter_rows(new)] == [None, None, "k-1"]
    finally:
        await new.close()
