"""The spool and the front end on a disk that really fills up: a 4 MiB tmpfs (needs root).

A failed write fails exactly its appends (503 "spool disk full" to their clients), leaves no
byte of them on disk, keeps every record written before, and the spool takes records again as
soon as the disk has room. One test fakes a failure to cut a file back (a fault a real disk will
not produce on demand).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.spool import Entry, Spool, SpoolUnwritable
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import events_on_stream, url
from tests.support.disk import small_tmpfs
from tests.support.wait import eventually


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs; skips where mounting fails (not root, no tmpfs)."""
    with small_tmpfs(tmp_path) as mount:
        yield mount


def fill(disk: Path, leave: int = 0) -> Path:
    """Take all the room on `disk` but about `leave` bytes; unlink the file returned to free it."""
    filler = disk / "filler.bin"
    stat = os.statvfs(disk)
    with open(filler, "wb") as f:
        want = stat.f_bavail * stat.f_frsize - leave
        if want > 0:
            os.posix_fallocate(f.fileno(), 0, want)
    return filler


def records(n: int, tag: str, size: int = 2000) -> list[tuple[str, bytes]]:
    return [
        (f"key-{i % 5}", f'{{"event_id": "{tag}-{i}", "pad": "{"x" * size}"}}'.encode()) for i in range(n)
    ]


def segment_files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.glob("*.seg"))}


async def read_all(spool: Spool) -> list[bytes]:
    assert spool.recovered is not None
    position = spool.recovered
    out: list[bytes] = []
    while True:
        entries, position = await spool.read(position, 1 << 20)
        if not entries:
            return out
        out.extend(e.data for e in entries)


async def test_a_write_the_disk_cannot_hold_fails_alone_and_leaves_no_byte(disk: Path) -> None:
    spool_dir = disk / "spool"
    before = records(20, "before")
    async with Spool(spool_dir, retry_interval=0.05) as spool:
        await spool.append(before)
        filler = await asyncio.to_thread(fill, disk, 8192)  # room for part of the next write
        files = segment_files(spool_dir)
        with pytest.raises(SpoolUnwritable, match=r"^spool disk full \(No space left on device\)$"):
            await spool.append(records(50, "lost"))
        assert segment_files(spool_dir) == files, "the partial frame was cut back"
        assert spool.write_error is not None and spool.write_error.startswith("spool disk full")
        assert spool.pending_events == 20
        assert spool.size_bytes == sum(files.values())
        assert await spool.flush(timeout=1.0)

        await asyncio.to_thread(filler.unlink)

        async def writable() -> bool:
            return spool.write_error is None

        await eventually(writable, timeout=5, what="the probe to see room on the disk")
        await spool.append(records(3, "after"))
    async with Spool(spool_dir) as spool:
        got = await read_all(spool)
    assert got == [d for _, d in before] + [d for _, d in records(3, "after")]


async def test_a_failed_write_across_a_segment_roll_is_undone_in_both_segments(disk: Path) -> None:
    spool_dir = disk / "spool"
    async with Spool(spool_dir, segment_bytes=64 * 1024) as spool:
        written: list[Entry] = []
        spool.on_written = written.extend
        await spool.append(records(10, "first"))
        filler = await asyncio.to_thread(fill, disk, 96 * 1024)
        files = segment_files(spool_dir)
        with pytest.raises(SpoolUnwritable):
            await spool.append(records(150, "lost"))  # ~300 KiB over several segments
        assert segment_files(spool_dir) == files
        await asyncio.to_thread(filler.unlink)
        await spool.append(records(150, "after"))
        assert len(written) == 160
    async with Spool(spool_dir) as spool:
        got = await read_all(spool)
    assert got == [d for _, d in records(10, "first")] + [d for _, d in records(150, "after")]


async def test_only_the_appends_of_the_failed_write_fail(disk: Path) -> None:
    spool_dir = disk / "spool"
    async with Spool(spool_dir, retry_interval=0.05) as spool:
        await spool.append(records(5, "ok"))
        filler = await asyncio.to_thread(fill, disk)
        # Queued together: they share one write, and fail together.
        futures = [spool.append(records(20, f"full-{n}")) for n in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, SpoolUnwritable) for r in results), results
        await asyncio.to_thread(filler.unlink)
        await spool.append(records(5, "later"))
        assert spool.pending_events == 10


async def test_a_file_that_cannot_be_cut_back_is_left_for_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fake: a write torn by EIO and a truncate that fails too (no real disk does this on cue)."""
    real_write = os.write
    torn = {"left": 1}

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        if torn["left"] and len(data) > 10_000:
            torn["left"] -= 1
            real_write(fd, bytes(data[:777]))
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    def failing_truncate(path: object, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    async with Spool(tmp_path) as spool:
        await spool.append(records(3, "kept"))
        monkeypatch.setattr(os, "write", failing_write)
        monkeypatch.setattr(os, "truncate", failing_truncate)
        with pytest.raises(SpoolUnwritable, match=r"^spool disk error \(Input/output error\)$"):
            await spool.append(records(10, "torn"))
        monkeypatch.undo()
        await spool.append(records(2, "next"))
        assert spool.write_error is None
        assert len(segment_files(tmp_path)) == 2
        assert [e.data for e in (await spool.read((1, 0), 1 << 20))[0]] == [d for _, d in records(3, "kept")]
    # After a restart the torn bytes are a tail cut off; every record kept comes back.
    async with Spool(tmp_path) as spool:
        got = await read_all(spool)
    assert got == [d for _, d in records(3, "kept")] + [d for _, d in records(2, "next")]


async def test_the_front_end_answers_503_on_a_full_disk_and_readyz_says_why(disk: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{disk.parent}/stream.db")
    await stream.create(1)
    config = IngestConfig(port=0, spool_dir=disk / "spool", drain_timeout=2.0, probe_interval=0.2)
    try:
        async with FrontEnd(config, stream) as front, aiohttp.ClientSession() as client:
            async with client.post(url(front, "/v1/events"), json={"event_id": "before"}) as r:
                assert r.status == 202
            filler = await asyncio.to_thread(fill, disk)
            body = [{"event_id": f"full-{i}", "title": "x" * 2000} for i in range(50)]
            async with client.post(url(front, "/v1/events"), json=body) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "5"
                assert await r.json() == {
                    "error": "spool disk full (No space left on device): the events were not stored; "
                    "retry later"
                }
            async with client.get(url(front, "/readyz")) as r:
                assert r.status == 503
                assert (await r.json())["error"] == "spool disk full (No space left on device)"
            await asyncio.to_thread(filler.unlink)

            async def ready() -> bool:
                async with client.get(url(front, "/readyz")) as r:
                    return r.status == 200

            await eventually(ready, timeout=5, what="/readyz 200 once the disk has room")
            async with client.post(url(front, "/v1/events"), json={"event_id": "after"}) as r:
                assert r.status == 202

            async def both_on_stream() -> set[str] | None:
                ids = {e["event_id"] for e in await events_on_stream(stream)}
                return ids if {"before", "after"} <= ids else None

            ids = await eventually(both_on_stream, timeout=10, what="the acknowledged events on the stream")
            assert not any(i.startswith("full-") for i in ids)
    finally:
        await stream.close()


async def test_stop_returns_within_the_drain_timeout_while_the_disk_is_full(disk: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{disk.parent}/stream.db")
    await stream.create(1)
    config = IngestConfig(port=0, spool_dir=disk / "spool", drain_timeout=1.0, probe_interval=0.2)
    try:
        front = FrontEnd(config, stream)
        await front.start()
        async with aiohttp.ClientSession() as client:
            await asyncio.to_thread(fill, disk)
            body = [{"event_id": f"full-{i}", "title": "x" * 2000} for i in range(50)]
            answers = []
            for _ in range(5):
                async with client.post(url(front, "/v1/events"), json=body) as r:
                    answers.append(r.status)
            assert answers == [503] * 5
        started = time.monotonic()
        await asyncio.wait_for(front.stop(), timeout=config.drain_timeout + 3)
        assert time.monotonic() - started < config.drain_timeout + 2
    finally:
        await stream.close()
