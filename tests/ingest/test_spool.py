"""The spool on a real disk: order, recovery, torn tails, corruption in the middle, deletion."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from processor.spool import Entry, Spool, SpoolFull


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


async def read_all(spool: Spool) -> list[Entry]:
    assert spool.recovered is not None
    position = spool.recovered
    out: list[Entry] = []
    while True:
        entries, position = await spool.read(position, 4096)
        if not entries:
            return out
        out.extend(entries)


def records(n: int, tag: str = "r") -> list[tuple[str, bytes]]:
    return [(f"key-{i % 7}", f'{{"event_id": "{tag}-{i}"}}'.encode()) for i in range(n)]


async def test_records_come_back_in_order_after_a_restart(tmp_path: Path) -> None:
    async with Spool(tmp_path, segment_bytes=2048) as spool:
        for chunk in range(10):
            await spool.append(records(30, f"c{chunk}"))
        assert spool.pending_events == 300
    async with Spool(tmp_path, segment_bytes=2048) as spool:
        assert spool.recovered_events == 300
        got = await read_all(spool)
    want = [d for c in range(10) for _, d in records(30, f"c{c}")]
    assert [e.data for e in got] == want
    assert len(list(segments(tmp_path))) > 3


async def test_a_torn_tail_is_cut_off(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        await spool.append(records(20))
    segment = sorted(segments(tmp_path))[0]
    whole = await asyncio.to_thread(segment.read_bytes)
    await asyncio.to_thread(segment.write_bytes, whole + whole[:25])  # a write a crash cut short
    async with Spool(tmp_path) as spool:
        assert [e.data for e in await read_all(spool)] == [d for _, d in records(20)]
    assert segment.stat().st_size == len(whole)


async def test_corruption_in_the_middle_keeps_every_good_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        await spool.append(records(20))
    segment = sorted(segments(tmp_path))[0]
    data = bytearray(await asyncio.to_thread(segment.read_bytes))
    broken = data.index(b'"r-5"')
    data[broken + 2] ^= 0xFF
    await asyncio.to_thread(segment.write_bytes, bytes(data))
    with caplog.at_level(logging.ERROR, logger="processor.spool"):
        async with Spool(tmp_path) as spool:
            got = [e.data for e in await read_all(spool)]
    assert got == [d for i, (_, d) in enumerate(records(20)) if i != 5]
    assert "corrupt bytes in the middle; kept 19 good records" in caplog.text
    assert (tmp_path / (segment.name + ".corrupt")).exists()


async def test_segments_are_deleted_once_every_record_is_acked(tmp_path: Path) -> None:
    async with Spool(tmp_path, segment_bytes=1024) as spool:
        written: list[Entry] = []
        spool.on_written = written.extend
        for _ in range(5):
            await spool.append(records(40))
        assert len(list(segments(tmp_path))) > 5
        spool.ack(written[:200])
        await spool.append(records(1))
        await spool.flush()
        assert len(list(segments(tmp_path))) <= 2
        spool.ack(written[200:])
        await spool.append(records(1))
        await spool.flush()
        assert spool.pending_events == 1
        assert len(list(segments(tmp_path))) == 1


async def test_a_full_spool_refuses_the_whole_append(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=4000) as spool:
        await spool.append(records(50))
        before = spool.size_bytes
        with pytest.raises(SpoolFull):
            spool.append(records(50))
        assert spool.size_bytes == before
        assert spool.pending_events == 50


async def test_fsync_always_resolves_after_the_write(tmp_path: Path) -> None:
    async with Spool(tmp_path, fsync="always") as spool:
        await spool.append(records(3))
        assert spool.size_bytes > 0
        assert sum(p.stat().st_size for p in segments(tmp_path)) == spool.size_bytes
