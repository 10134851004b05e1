"""Group commit of the embedded stream: concurrent puts share a transaction, each keeps its own answer."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import cast

import pytest

from processor.errors import InvalidRequest, StreamUnavailable
from processor.streams.base import PutRecord, PutResult
from processor.streams.embedded import EmbeddedStream
from processor.streams.embedded_log import Put, SqliteLog
from tests.streams.test_embedded import read_all


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many calls each transaction of SqliteLog.put carried."""
    sizes: list[int] = []
    put = SqliteLog.put

    def counting(self: SqliteLog, calls: list[Put]) -> list[list[PutResult] | Exception]:
        sizes.append(len(calls))
        return put(self, calls)

    monkeypatch.setattr(SqliteLog, "put", counting)
    return sizes


def call(tag: str, n: int = 500) -> list[PutRecord]:
    return [PutRecord(f"{tag}-{i}".encode(), f"visitor-{i % 37}") for i in range(n)]


async def test_concurrent_puts_commit_together_in_arrival_order(tmp_path: Path, groups: list[int]) -> None:
    calls = [call(f"c{c}") for c in range(8)]
    async with EmbeddedStream(tmp_path / "s.db") as stream:
        await stream.create(4)
        answers = await asyncio.gather(*(stream.put_records(records) for records in calls))
        stored = await read_all(stream)
    assert groups == [8], "the 8 calls waiting at once went in one transaction"
    for records, results in zip(calls, answers, strict=True):
        assert len(results) == len(records)
        assert all(r == PutResult(r.shard_id, r.sequence_number) and r.ok for r in results)
    by_sequence = {
        r.sequence_number: record.data
        for records, results in zip(calls, answers, strict=True)
        for record, r in zip(records, results, strict=True)
    }
    for shard, got in stored.items():
        assert [by_sequence[r.sequence_number] for r in got] == [r.data for r in got]
        tags = [r.data.split(b"-")[0] for r in got]
        assert tags == sorted(tags), f"{shard}: calls stored in arrival order"
        numbers = [int(r.sequence_number) for r in got]
        assert numbers == sorted(set(numbers))
    assert sum(len(got) for got in stored.values()) == 8 * 500


async def test_a_failing_call_fails_alone(tmp_path: Path, groups: list[int]) -> None:
    """One call over the limits (refused before the log) and one SQLite cannot store (rolled back to
    its savepoint) fail; the calls around them are stored, with no gap in the sequence numbers."""
    unbindable = [PutRecord(b"fine", "k"), PutRecord(cast(bytes, [1, 2]), "k")]
    too_big = [PutRecord(b"x" * (1024 * 1024), "k")]
    async with EmbeddedStream(tmp_path / "s.db") as stream:
        await stream.create(1)
        answers = await asyncio.gather(
            stream.put_records(call("a", 3)),
            stream.put_records(unbindable),
            stream.put_records(too_big),
            stream.put_records(call("b", 3)),
            return_exceptions=True,
        )
        stored = await read_all(stream)
    a, failed, refused, b = answers
    assert isinstance(failed, StreamUnavailable) and "is unusable" in str(failed)
    assert isinstance(failed.__cause__, sqlite3.ProgrammingError)
    assert isinstance(refused, InvalidRequest) and "over the 1 MiB limit" in str(refused)
    assert groups == [3]
    assert isinstance(a, list) and isinstance(b, list)
    assert [r.data for r in stored["shardId-000000000000"]] == [r.data for r in call("a", 3) + call("b", 3)]
    locals_ = [int(str(r.sequence_number)[-30:]) for r in a + b]
    assert locals_ == list(range(locals_[0], locals_[0] + 6))


async def test_a_lock_past_the_busy_timeout_fails_every_call_of_the_group(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with EmbeddedStream(db, busy_timeout=0.2) as stream:
        await stream.create(1)
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            answers = await asyncio.gather(
                *(stream.put_records(call(f"c{c}", 5)) for c in range(3)), return_exceptions=True
            )
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert all(isinstance(e, StreamUnavailable) and "locked" in str(e) for e in answers)
        assert len({id(e) for e in answers}) == 3, "each caller gets an exception of its own"
        after = await stream.put_records(call("after", 5))
        assert all(r.ok for r in after)
        assert sum(len(r) for r in (await read_all(stream)).values()) == 5


async def test_a_cancelled_caller_leaves_the_others_answered(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db") as stream:
        await stream.create(2)
        tasks = [asyncio.create_task(stream.put_records(call(f"c{c}", 50))) for c in range(4)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        assert all(isinstance(d, list) and len(d) == 50 for i, d in enumerate(done) if i != 1)
        assert len(await stream.put_records(call("later", 10))) == 10
