"""A reject is filed once even when the front end sends its dead letter twice: real `shardflow
ingest` SIGKILLed after the 202 (its spool re-sends on restart, by design) and a real `shardflow
consume` run to the end of the stream."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.request
from pathlib import Path

import orjson
import pytest

from processor.event import DeadLetterRecord, decode_record
from processor.streams.base import IteratorType
from processor.streams.embedded import EmbeddedStream
from tests.e2e.harness import Shardflow
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

REJECT = b'[{"event_id": "bad-1", "url": 1}]'
SENTINEL = b'{"event_id": "after-restart", "url": "https://shop.example/"}'


def post(ingest: Shardflow, body: bytes) -> dict[str, object]:
    request = urllib.request.Request(
        f"{ingest.url}/v1/events", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        answer: dict[str, object] = orjson.loads(response.read())
        return answer


async def _letters_on_stream(path: Path) -> list[DeadLetterRecord]:
    stream = EmbeddedStream.from_uri(f"sqlite:///{path}")
    letters: list[DeadLetterRecord] = []
    try:
        for shard in (await stream.describe()).shards:
            iterator: str | None = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
            while iterator:
                result = await stream.get_records(iterator)
                letters.extend(
                    r
                    for r in map(decode_record, (x.data for x in result.records))
                    if isinstance(r, DeadLetterRecord)
                )
                if not result.records:
                    break
                iterator = result.next_iterator
    finally:
        await stream.close()
    return letters


def letters_on_stream(data: Path) -> list[DeadLetterRecord]:
    path = data / "stream.db"
    return asyncio.run(_letters_on_stream(path)) if path.exists() else []


def filed(warehouse: Path) -> list[tuple[str, str, str | None]]:
    db = sqlite3.connect(f"file:{warehouse}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute("SELECT stage, reason, dedup_key FROM shardflow_dead_letters ORDER BY id"))
    finally:
        db.close()


def test_a_reject_resent_by_the_spool_after_sigkill_is_one_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    common = ("--shards", "1")  # one shard: the sentinel's row proves every earlier record was read
    ingest = Shardflow(data, role="ingest", extra=common)
    consume = Shardflow(data, role="consume", extra=common)
    try:
        ingest.start()
        answer = post(ingest, REJECT)
        assert answer == {
            "accepted": 0,
            "rejected": [{"index": 0, "error": "url: must be a string, not a number"}],
        }
        wait_until(
            lambda: len(letters_on_stream(data)) == 1,
            timeout=30,
            interval=0.2,
            what="the dead letter on the stream",
        )
        ingest.kill()  # SIGKILL after the 202 and the put: the spool still holds the record

        ingest.start()
        wait_until(
            lambda: len(letters_on_stream(data)) == 2, timeout=30, interval=0.2, what="the spool's re-send"
        )
        first, again = letters_on_stream(data)
        assert first == again and first.id is not None  # the same letter, twice on the stream
        assert post(ingest, SENTINEL)["accepted"] == 1

        consume.start()
        wait_until(
            lambda: consume.count("select count(*) from page_views where event_id = 'after-restart'") == 1,
            timeout=60,
            what="the sentinel row",
        )
        assert consume.stop() == 0
        assert ingest.stop() == 0
        assert filed(consume.warehouse) == [("ingest", "url: must be a string, not a number", first.id)]
        assert consume.count() == 1
    finally:
        ingest.kill()
        consume.kill()
