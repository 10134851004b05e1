"""What only the embedded stream promises: one file shared by processes, retention, its own errors."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from processor.errors import InvalidRequest, StreamUnavailable
from processor.streams import open_stream
from processor.streams.base import IteratorType, PutRecord, Record
from processor.streams.embedded import EmbeddedStream
from processor.streams.embedded_log import format_sequence, parse_sequence, sequence_head
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
SHARD0 = "shardId-000000000000"


async def read_all(stream: EmbeddedStream) -> dict[str, list[Record]]:
    """Every record of every shard, from TRIM_HORIZON until a batch comes back empty."""
    out: dict[str, list[Record]] = {}
    for shard in (await stream.describe()).shards:
        iterator: str | None = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
        records = out.setdefault(shard.shard_id, [])
        while iterator is not None:
            result = await stream.get_records(iterator)
            records.extend(result.records)
            iterator = result.next_iterator if result.records else None
    return out


def test_from_uri_reads_the_path_and_the_stream_name() -> None:
    stream = EmbeddedStream.from_uri("sqlite:////tmp/x/stream.db?name=clicks")
    assert (stream.path, stream.name) == (Path("/tmp/x/stream.db"), "clicks")
    relative = EmbeddedStream.from_uri("sqlite:///data/stream.db")
    assert (relative.path, relative.name) == (Path("data/stream.db"), "shardflow")
    assert isinstance(open_stream("sqlite:///data/stream.db"), EmbeddedStream)


async def test_a_second_stream_object_on_the_file_sees_the_records(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "stream.db"
    async with EmbeddedStream(db) as writer, EmbeddedStream(db) as reader:
        await writer.create(4)
        results = await writer.put_records([PutRecord(f"e{i}".encode(), f"p{i}") for i in range(100)])
        seen = await read_all(reader)
        assert sorted(r.data for rs in seen.values() for r in rs) == sorted(
            f"e{i}".encode() for i in range(100)
        )
        assert {r.shard_id for r in results} == set(seen)

        iterator = await reader.get_shard_iterator(SHARD0, IteratorType.LATEST)
        await writer.split_shard(SHARD0)
        assert len((await reader.describe()).open_shards) == 5
        assert (await reader.get_records(iterator)).next_iterator is None


async def test_streams_of_different_names_share_a_file_apart(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db", "a") as a, EmbeddedStream(tmp_path / "s.db", "b") as b:
        await a.create(1)
        await b.create(2)
        await a.put_records([PutRecord(b"only-a", "k")])
        assert [r.data for rs in (await read_all(a)).values() for r in rs] == [b"only-a"]
        assert all(rs == [] for rs in (await read_all(b)).values())
        iterator = await a.get_shard_iterator(SHARD0, IteratorType.TRIM_HORIZON)
        with pytest.raises(InvalidRequest, match="stream 'a'"):
            await b.get_records(iterator)


async def test_two_processes_putting_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    db, batches, tags = tmp_path / "stream.db", 60, ("w1", "w2")
    writers = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.streams.writer", str(db), "shared", tag, str(batches)),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for tag in tags
    ]
    try:
        async with asyncio.timeout(60):
            for proc in writers:
                assert proc.stdout is not None
                assert (await proc.stdout.readline()).strip() == b"ready"
            for proc in writers:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
            for proc in writers:
                out, _ = await proc.communicate()
                assert (proc.returncode, out.strip()) == (0, b"done")
    finally:
        for proc in writers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async with EmbeddedStream(db, "shared") as stream:
        assert len((await stream.describe()).shards) == 4
        seen = await read_all(stream)
    data = [r.data for rs in seen.values() for r in rs]
    expected = {f"{tag}-{n}".encode() for tag in tags for n in range(batches * 500)}
    assert len(data) == len(expected) == 2 * batches * 500
    assert set(data) == expected
    for records in seen.values():
        sequences = [int(r.sequence_number) for r in records]
        assert sequences == sorted(set(sequences))
        writer_of = [r.data[:2] for r in records]
        for tag in (b"w1", b"w2"):
            mine = [int(r.data[3:]) for r in records if r.data.startswith(tag)]
            assert mine == sorted(mine), "each writer's records keep their order"
        switches = sum(1 for a, b in itertools.pairwise(writer_of) if a != b)
        assert switches > 1, "the writers' puts interleaved"


async def test_trimmed_records_are_gone_and_old_iterators_start_at_the_oldest_kept(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db", retention=0.3) as stream:
        await stream.create(1)
        await stream.put_records([PutRecord(b"old", "k")] * 3)
        iterator = await stream.get_shard_iterator(SHARD0, IteratorType.TRIM_HORIZON)
        put_at = time.time()
        wait_until(lambda: time.time() > put_at + 0.4, what="the old records to pass retention")
        await stream.put_records([PutRecord(b"new", "k")] * 2)
        assert await stream.trim() == 0, "the put already trimmed the old records"

        result = await stream.get_records(iterator)
        assert [r.data for r in result.records] == [b"new", b"new"]
        assert [r.data for r in (await read_all(stream))[SHARD0]] == [b"new", b"new"]


async def test_closed_shards_leave_describe_after_retention(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db", retention=0.3) as stream:
        await stream.create(1)
        await stream.split_shard(SHARD0)
        assert SHARD0 in {s.shard_id for s in (await stream.describe()).shards}
        closed_at = time.time()
        wait_until(lambda: time.time() > closed_at + 0.4, what="retention to pass")
        assert SHARD0 not in {s.shard_id for s in (await stream.describe()).shards}


async def test_a_sequence_number_of_another_shard_is_refused(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db") as stream:
        await stream.create(2)
        (placed,) = await stream.put_records([PutRecord(b"x", "k", explicit_hash_key=0)])
        assert placed.sequence_number is not None
        with pytest.raises(InvalidRequest, match="does not belong to shard shardId-000000000001"):
            await stream.get_shard_iterator(
                "shardId-000000000001",
                IteratorType.AT_SEQUENCE_NUMBER,
                sequence_number=placed.sequence_number,
            )
        with pytest.raises(InvalidRequest, match="not a decimal"):
            await stream.get_shard_iterator(SHARD0, IteratorType.AFTER_SEQUENCE_NUMBER, sequence_number="x")
        with pytest.raises(InvalidRequest, match="invalid shard iterator"):
            await stream.get_records("not-an-iterator")
        with pytest.raises(InvalidRequest, match="invalid shard id"):
            await stream.get_shard_iterator("shard-7", IteratorType.LATEST)


async def test_merging_shards_that_are_not_adjacent_is_refused(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db") as stream:
        await stream.create(3)
        with pytest.raises(InvalidRequest, match="not adjacent"):
            await stream.merge_shards(SHARD0, "shardId-000000000002")
        with pytest.raises(InvalidRequest, match="must lie in"):
            await stream.split_shard(SHARD0, 0)
        assert len((await stream.describe()).open_shards) == 3


async def test_get_records_stops_at_10_mib(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "s.db") as stream:
        await stream.create(1)
        big = PutRecord(b"x" * (1024 * 1024 - 1), "k")
        for _ in range(3):
            await stream.put_records([big] * 4)
        iterator = await stream.get_shard_iterator(SHARD0, IteratorType.TRIM_HORIZON)
        first = await stream.get_records(iterator)
        assert len(first.records) == 10
        assert first.millis_behind_latest >= 0 and first.next_iterator is not None
        rest = await stream.get_records(first.next_iterator)
        assert len(rest.records) == 2 and rest.millis_behind_latest == 0


async def test_a_write_lock_held_past_the_busy_timeout_is_stream_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with EmbeddedStream(db, busy_timeout=0.2) as stream:
        await stream.create(1)
        other = sqlite3.connect(db, isolation_level=None)  # another process's writer, holding the lock
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StreamUnavailable, match="locked"):
                await stream.put_records([PutRecord(b"x", "k")])
            iterator = await stream.get_shard_iterator(SHARD0, IteratorType.TRIM_HORIZON)
            assert (await stream.get_records(iterator)).records == (), "readers are not blocked"
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await stream.put_records([PutRecord(b"x", "k")]))[0].ok


async def test_an_unopenable_file_is_stream_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    async with EmbeddedStream(tmp_path / "dir.db") as stream:
        with pytest.raises(StreamUnavailable):
            await stream.create(1)


async def test_close_is_idempotent_and_the_stream_reopens(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path / "s.db")
    await stream.close()
    await stream.create(1)
    await stream.close()
    await stream.close()
    assert len((await stream.describe()).shards) == 1
    await stream.close()


async def test_no_blocking_call_runs_on_the_event_loop(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path / "s.db")
    with blockbuster_ctx():
        await stream.create(2)
        await stream.put_records([PutRecord(os.urandom(100), f"k{i}") for i in range(500)])
        iterator = await stream.get_shard_iterator(SHARD0, IteratorType.TRIM_HORIZON)
        assert (await stream.get_records(iterator)).records
        await stream.split_shard(SHARD0)
        await stream.close()


def test_sequence_numbers_are_the_shard_head_and_30_digits_of_local() -> None:
    """Reads and puts paste `sequence_head` and the zero-padded local; it must equal the number."""
    for idx in (0, 1, 9, 10, 123_456):
        for local in (0, 1, 999, 2**40 - 1):
            assert sequence_head(idx) + f"{local:030d}" == format_sequence(idx, local)
            assert parse_sequence(format_sequence(idx, local), idx) == local


async def test_reads_return_the_sequence_numbers_puts_gave_across_shards(tmp_path: Path) -> None:
    async with EmbeddedStream(tmp_path / "stream.db") as stream:
        await stream.create(2)
        await stream.split_shard("shardId-000000000001")
        results = await stream.put_records([PutRecord(f"e{i}".encode(), f"p{i}") for i in range(300)])
        seen = await read_all(stream)
    put = {(r.shard_id, r.sequence_number) for r in results}
    read = {(shard, r.sequence_number) for shard, records in seen.items() for r in records}
    assert put == read and len(read) == 300
    assert {shard for shard, _ in put} == {SHARD0, "shardId-000000000002", "shardId-000000000003"}
    for records in seen.values():
        assert all(isinstance(r, Record) and r.sub_sequence_number == 0 for r in records)
        assert [int(r.sequence_number) for r in records] == sorted(int(r.sequence_number) for r in records)
