"""Dead letters end to end at function level: filed by a commit, listed by group, redriven through
a real embedded stream, loaded by the consumer's own record processing, never doubled."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from processor.event import format_ts
from processor.streams.base import IteratorType, Record
from processor.streams.embedded import EmbeddedStream
from shard_consumer.pool import process_records
from sinks import Batch, DeadLetter, Warehouse
from sinks.dead_letters import dead_letter_groups, replay_dead_letters
from tests.sinks.test_warehouse import SHARD, STREAM, take

NOW = format_ts(time.time())
FUTURE = "ts: is more than 86400 s in the future"
GOOD = {"event_id": "fixed-1", "url": "https://example.com/a", "received_at": NOW, "title": "ok 🎉"}


def letters() -> list[DeadLetter]:
    return [
        # an enrichment bug, since fixed: the stored record replays as it was
        DeadLetter("transform", "ValueError: bad", orjson.dumps(GOOD).decode(), SHARD, "11"),
        # a client payload without event_id: replays get one id derived from the letter
        DeadLetter("ingest", "ts: is more than 86400 s in the future", '{"url": "https://example.com/b"}'),
        DeadLetter(
            "ingest",
            "ts: is more than 86400 s in the future",
            '[{"event_id": "arr-1"}, {"event_id": "arr-2"}]',
        ),
        # still bad: these stay
        DeadLetter("ingest", "url: must be a string, not a number", '{"url": 1}'),
        DeadLetter("decode", "record is not JSON", "{oops", SHARD, "12"),
    ]


async def file_letters(wh: Warehouse) -> None:
    fence = await take(wh)
    await wh.write_batch(Batch(STREAM, SHARD, [], letters(), "12", fence))


async def read_all(stream: EmbeddedStream) -> list[Record]:
    records: list[Record] = []
    for shard in (await stream.describe()).shards:
        iterator: str | None = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
        while iterator:
            result = await stream.get_records(iterator)
            records.extend(result.records)
            if not result.records:
                break
            iterator = result.next_iterator
    return records


async def test_groups(warehouse: Warehouse) -> None:
    await file_letters(warehouse)
    groups = await dead_letter_groups(warehouse)
    assert [(g.stage, g.reason, g.count) for g in groups] == [
        ("decode", "record is not JSON", 1),
        ("ingest", "ts: is more than 86400 s in the future", 2),
        ("ingest", "url: must be a string, not a number", 1),
        ("transform", "ValueError: bad", 1),
    ]
    assert all(g.first_at is not None and g.first_at <= g.last_at for g in groups)  # type: ignore[operator]
    assert [g.count for g in await dead_letter_groups(warehouse, stage="ingest")] == [2, 1]
    assert [g.reason for g in await dead_letter_groups(warehouse, reason_like="%future")] == [
        "ts: is more than 86400 s in the future"
    ]


async def test_replay_redrives_what_now_passes(warehouse: Warehouse, tmp_path: Path) -> None:
    await file_letters(warehouse)
    stream = EmbeddedStream(tmp_path / "stream.db")
    await stream.create(2)
    try:
        only_decode = await replay_dead_letters(warehouse, stream, stage="decode")
        assert (only_decode.examined, only_decode.replayed, only_decode.kept) == (1, 0, 1)
        assert await read_all(stream) == []

        report = await replay_dead_letters(warehouse, stream)
        assert (report.examined, report.replayed, report.events, report.kept) == (5, 3, 4, 2)
        assert report.errors.pop("url: must be a string, not a number") == 1
        [(why, n)] = report.errors.items()
        assert why.startswith("payload is not JSON") and n == 1
        remaining = await warehouse.list_dead_letters()
        assert [d.payload for d in remaining] == ['{"url": 1}', "{oops"]

        records = await read_all(stream)
        events = [orjson.loads(r.data) for r in records]
        ids = sorted(e["event_id"] for e in events)
        assert len(ids) == 4 and {"fixed-1", "arr-1", "arr-2"} <= set(ids)
        fixed = next(e for e in events if e["event_id"] == "fixed-1")
        assert fixed["received_at"] == NOW and fixed["title"] == "ok 🎉"

        # the consumer's own processing loads them; a second redrive of the same letters (as
        # after a crash between put and delete) brings the same ids, which the warehouse drops
        fence = await take(warehouse)
        processed = process_records(
            SHARD, [r.sequence_number for r in records], [r.data for r in records], False
        )
        assert processed.dead_letters == []
        assert await warehouse.write_batch(Batch(STREAM, SHARD, processed.rows, [], "99", fence)) == 4
        again = process_records(SHARD, ["100"] * 4, [r.data for r in records], False)
        assert await warehouse.write_batch(Batch(STREAM, SHARD, again.rows, [], "100", fence)) == 0
        result = await warehouse.query("SELECT count(*) FROM page_views")
        assert int(str(result.rows[0][0])) == 4

        nothing = await replay_dead_letters(warehouse, stream, reason_like="%string%")
        assert (nothing.examined, nothing.replayed, nothing.kept) == (1, 0, 1)
    finally:
        await stream.close()


async def test_replay_ids_are_stable_across_replays(warehouse: Warehouse, tmp_path: Path) -> None:
    """Put twice without the delete (a crash in between): both carry the same event_id."""
    await file_letters(warehouse)
    [letter] = [d for d in await warehouse.list_dead_letters() if d.payload.startswith('{"url": "https')]
    from sinks.dead_letters import _events

    first = _events(letter, time.time())
    second = _events(letter, time.time() + 5)
    assert first[0]["event_id"] == second[0]["event_id"]
