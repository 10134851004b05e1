"""The spool: an append-only, segmented, checksummed log of accepted events on local disk.

An event is acknowledged to its client only once it is in the spool, and leaves the spool only
once the stream has acknowledged it, so a crash between the two loses nothing: on the next start
every record still in the spool is sent again (the consumer drops duplicates by `event_id`).

Layout: `<dir>/<16-digit id>.seg` files, each a run of frames

    magic u16 | length u32 | crc32 u32 | partition-key length u16 | partition key | data

written by ONE writer task in large sequential writes (group commit: every request queued while
the previous write ran shares the next write). With `fsync="always"` a request's future resolves
after its bytes are fsync'd; with `"interval"` a background task fsyncs every `fsync_interval`;
with `"never"` the OS decides. Every setting survives SIGKILL (the bytes are in the page cache).

Recovery: a torn or garbled tail (the write a crash cut short) is truncated; a corrupt frame in
the middle of a segment is reported as `CorruptSpool` in the log, the segment is rewritten with
every frame that still checks out, and the original kept beside it as `<id>.seg.corrupt`.

A segment is deleted once it is sealed (the writer moved on) and every record in it was acked;
a clean close also deletes the current segment when every record in it was acked, so a restart
after SIGTERM re-sends nothing (a segment partly acked when a drain timed out is re-sent whole).

A failed write (ENOSPC, EIO) fails exactly the appends in it with `SpoolUnwritable`: the files
are cut back to where the write began (or, when even that fails, the writer moves on to a fresh
segment), so none of their records is half-kept and every record written before stays readable.
Every append's future resolves, written or failed. The next append is tried again as usual, and
while the last write failed a small probe write every `retry_interval` tells when the disk takes
bytes again; `write_error` says why until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import operator
import os
import struct
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from processor import metrics
from processor.errors import CorruptSpool
from processor.ingest.config import FsyncPolicy

__all__ = ["Entry", "Position", "Spool", "SpoolFull", "SpoolUnwritable", "frame", "scan_frames"]

log = logging.getLogger(__name__)

MAGIC: Final = 0x5346
_HEADER = struct.Struct("<HII")
_KEY_LEN = struct.Struct("<H")
HEADER_BYTES: Final = _HEADER.size
MAX_FRAME: Final = 8 * 1024 * 1024
_SUFFIX = ".seg"
_WRITE_CHUNK: Final = 8 * 1024 * 1024
"""Most bytes one group commit writes; the rest waits for the next write."""
_INLINE_WRITE: Final = 256 * 1024
"""Writes up to this size (no fsync, no new segment) go straight to the page cache from the loop."""
_PROBE_BYTES: Final = 64 * 1024
_PROBE_NAME: Final = ".probe"
_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_KEY_OF = operator.itemgetter(0)
_DATA_OF = operator.itemgetter(1)
_SEGMENT_OF = operator.attrgetter("segment")

Position = tuple[int, int]
"""(segment id, byte offset) of a frame; tuples order as the spool does."""


class SpoolFull(Exception):
    """Accepting these bytes would take the spool past its limit; nothing was written."""

    def __init__(self, used: int, limit: int) -> None:
        self.used = used
        self.limit = limit
        super().__init__(f"the spool holds {used} bytes of its {limit}-byte limit")


class SpoolUnwritable(Exception):
    """The write holding these records failed (disk full, I/O error); none of them was kept.

    Retry later: the spool tries again on the next append.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _write_failure(exc: BaseException) -> str:
    """What a failed write means for the client: "spool disk full" or the I/O error."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return f"spool disk full ({os.strerror(exc.errno)})"
    if isinstance(exc, OSError) and exc.errno:
        return f"spool disk error ({os.strerror(exc.errno)})"
    return f"spool write failed ({type(exc).__name__})"


@dataclass(slots=True)
class Entry:
    """One record in the spool: where it lies, and what goes to the stream."""

    segment: int
    offset: int
    partition_key: str
    data: bytes
    size: int
    """Bytes as PutRecords counts them (data plus partition key)."""

    @property
    def position(self) -> Position:
        return (self.segment, self.offset)


@dataclass(slots=True)
class _Segment:
    path: Path
    size: int = 0
    written: int = 0
    acked: int = 0
    sealed: bool = False


@dataclass(slots=True)
class _Append:
    records: Sequence[tuple[str, bytes]]
    future: asyncio.Future[None]
    nbytes: int


@dataclass(slots=True)
class _Chunk:
    """Bytes bound for one segment in one write, and the entries they hold."""

    segment: int
    data: bytearray = field(default_factory=bytearray)
    roll_after: bool = False


def frame(partition_key: str, data: bytes) -> bytes:
    head = _key_head(partition_key)
    return _HEADER.pack(MAGIC, len(head) + len(data), zlib.crc32(data, zlib.crc32(head))) + head + data


def _key_head(partition_key: str) -> bytes:
    """The key-length prefix and the key's UTF-8 bytes: a frame's payload up to the data."""
    key = partition_key.encode("utf-8")
    return _KEY_LEN.pack(len(key)) + key


def _frame_at(buf: bytes | memoryview, pos: int) -> tuple[str, bytes, int] | None:
    """The frame at `pos` as (partition key, data, end), or None when it does not check out."""
    if len(buf) - pos < HEADER_BYTES:
        return None
    magic, length, crc = _HEADER.unpack_from(buf, pos)
    end = pos + HEADER_BYTES + length
    if magic != MAGIC or length < _KEY_LEN.size or length > MAX_FRAME or end > len(buf):
        return None
    payload = bytes(buf[pos + HEADER_BYTES : end])
    if zlib.crc32(payload) != crc:
        return None
    (key_len,) = _KEY_LEN.unpack_from(payload, 0)
    if _KEY_LEN.size + key_len > length:
        return None
    try:
        key = payload[_KEY_LEN.size : _KEY_LEN.size + key_len].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return key, payload[_KEY_LEN.size + key_len :], end


def scan_frames(buf: bytes) -> tuple[list[tuple[int, str, bytes]], int, int]:
    """Every good frame in `buf` as (offset, key, data); the end of the last one; bytes skipped.

    Skipped bytes between good frames mean corruption in the middle; bytes after the last good
    frame are a torn tail.
    """
    frames: list[tuple[int, str, bytes]] = []
    pos = 0
    good_end = 0
    skipped = 0
    magic = _HEADER.pack(MAGIC, 0, 0)[:2]
    while pos < len(buf):
        got = _frame_at(buf, pos)
        if got is None:
            nxt = buf.find(magic, pos + 1)
            while nxt != -1 and _frame_at(buf, nxt) is None:
                nxt = buf.find(magic, nxt + 1)
            if nxt == -1:
                break
            skipped += nxt - pos
            pos = nxt
            continue
        key, data, end = got
        frames.append((pos, key, data))
        pos = good_end = end
    return frames, good_end, skipped


def _segment_name(segment: int) -> str:
    return f"{segment:016d}{_SUFFIX}"


class Spool:
    """The on-disk log between the handlers and the flusher. Use from one event loop.

    `on_written` is called on the loop with the entries of each completed write, in spool order.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 0.1,
        segment_bytes: int = 16 * 1024 * 1024,
        max_bytes: int = 1024 * 1024 * 1024,
        retry_interval: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.retry_interval = retry_interval
        """While the last write failed, how often a probe write checks whether the disk takes bytes."""
        self.on_written: Callable[[list[Entry]], None] = lambda entries: None
        self._segments: dict[int, _Segment] = {}
        self._current = 0
        self._fd: int | None = None
        self._queue: deque[_Append] = deque()
        self._queued_bytes = 0
        self._size = 0
        self._pending_events = 0
        self._wake = asyncio.Event()
        self._dirty = False
        self._io_lock = asyncio.Lock()
        self._to_delete: list[int] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._fsync_task: asyncio.Task[None] | None = None
        self.write_error: str | None = None
        """Why the last write failed ("spool disk full ..."); None once a write succeeds."""
        self._abandon_to: int | None = None
        self._last_future: asyncio.Future[None] | None = None
        self.recovered: Position | None = None
        """Where the records left by an earlier run start, or None when there were none."""
        self.recovered_events = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Recover what an earlier run left, open a fresh segment, start the writer. Idempotent."""
        if self._writer_task is not None:
            return
        recovered = await asyncio.to_thread(self._recover)
        for segment, state in recovered.items():
            self._segments[segment] = state
            self._size += state.size
            self._pending_events += state.written
            self.recovered_events += state.written
        if recovered:
            self.recovered = (min(recovered), 0)
        self._current = max(recovered, default=0) + 1
        await asyncio.to_thread(self._open_segment, self._current)
        self._segments[self._current] = _Segment(self.directory / _segment_name(self._current))
        self._publish()
        self._writer_task = asyncio.create_task(self._writer_loop(), name="spool-writer")
        if self.fsync == "interval":
            self._fsync_task = asyncio.create_task(self._fsync_loop(), name="spool-fsync")

    async def close(self) -> None:
        """Write what is queued, fsync (unless fsync="never"), stop the writer, and delete every
        segment the stream fully acknowledged, the current one too, so the next start re-sends
        nothing acknowledged. Idempotent. (After SIGKILL the current segment is re-sent whole.)"""
        if self._writer_task is None:
            return
        await self.flush()
        for task in (self._fsync_task, self._writer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer_task = self._fsync_task = None
        async with self._io_lock:
            try:
                await asyncio.to_thread(self._close_fd, self.fsync != "never")
            except OSError as exc:
                log.error("spool: the last fsync on close failed: %s", exc)
            done = [s for s, state in self._segments.items() if state.acked >= state.written]
            deletions, self._to_delete = sorted({*self._to_delete, *done}), []
            await asyncio.to_thread(self._delete, deletions)
        for segment in deletions:
            gone = self._segments.pop(segment, None)
            if gone is not None:
                self._size -= gone.size
        self._publish()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every append so far is written or has failed; False if `timeout` ran out."""
        last = self._last_future
        if last is None or last.done():
            return True
        done, _ = await asyncio.wait([last], timeout=timeout)
        return bool(done)

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the public surface ------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes in segment files now, plus bytes queued for the next write."""
        return self._size + self._queued_bytes

    @property
    def pending_events(self) -> int:
        """Records written and not yet acknowledged by the stream."""
        return self._pending_events

    @property
    def end(self) -> Position:
        """The position the next written record will take."""
        return (self._current, self._segments[self._current].size)

    def append(self, records: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]:
        """Queue (partition key, data) records; the future resolves once they are written.

        Raises SpoolFull, writing nothing, when they would take the spool past `max_bytes`. The
        future fails with SpoolUnwritable, none of the records kept, when their write fails.
        """
        nbytes = (
            len(records) * (HEADER_BYTES + _KEY_LEN.size)
            + 4 * sum(map(len, map(_KEY_OF, records)))  # UTF-8 takes at most 4 bytes a character
            + sum(map(len, map(_DATA_OF, records)))
        )
        if self.size_bytes + nbytes > self.max_bytes:
            raise SpoolFull(self.size_bytes, self.max_bytes)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(records, future, nbytes))
        self._last_future = future
        self._queued_bytes += nbytes
        self._wake.set()
        return future

    def ack(self, entries: Sequence[Entry]) -> None:
        """The stream holds these records: count them off, and delete segments fully acked."""
        for segment, count in Counter(map(_SEGMENT_OF, entries)).items():
            state = self._segments.get(segment)
            if state is None:
                continue
            state.acked += count
            self._pending_events -= count
            if state.sealed and state.acked >= state.written:
                self._retire(segment)
        self._publish()

    async def read(self, start: Position, max_bytes: int) -> tuple[list[Entry], Position]:
        """Records from `start` on, about `max_bytes` of them, and the position after the last.

        Reads only what the writer has finished; steps into the next segment at a sealed end.
        """
        segment, offset = start
        state = self._segments.get(segment)
        while state is None or (state.sealed and offset >= state.size):
            later = [s for s in self._segments if s > segment]
            if not later:
                return [], (segment, offset)
            segment, offset = min(later), 0
            state = self._segments[segment]
        if offset >= state.size:
            return [], (segment, offset)
        path, limit = state.path, state.size
        buf = await asyncio.to_thread(_read_range, path, offset, min(limit, offset + max(max_bytes, 1)))
        entries: list[Entry] = []
        pos = 0
        while (got := _frame_at(buf, pos)) is not None:
            key, data, end = got
            entries.append(Entry(segment, offset + pos, key, data, len(data) + len(key)))
            pos = end
        if not entries:
            buf = await asyncio.to_thread(_read_range, path, offset, limit)
            got = _frame_at(buf, 0)
            if got is None:
                raise CorruptSpool(f"{path}: no readable record at offset {offset}")
            key, data, pos = got
            entries.append(Entry(segment, offset, key, data, len(data) + len(key)))
        offset += pos
        if state.sealed and offset >= state.size:
            later = [s for s in self._segments if s > segment]
            if later:
                return entries, (min(later), 0)
        return entries, (segment, offset)

    # -- the writer --------------------------------------------------------------------------

    async def _writer_loop(self) -> None:
        while True:
            if self.write_error is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_interval):
                        await self._wake.wait()
                if not self._wake.is_set():
                    await self._probe()
                    continue
            self._wake.clear()
            while self._queue or self._to_delete:
                await self._write_some()

    async def _write_some(self) -> None:
        """One group commit: the queued appends up to `_WRITE_CHUNK`, written or failed together."""
        appends: list[_Append] = []
        total = 0
        while self._queue and (not appends or total + self._queue[0].nbytes <= _WRITE_CHUNK):
            item = self._queue.popleft()
            appends.append(item)
            total += item.nbytes
        if self._abandon_to is not None:
            self._abandon_current(self._abandon_to)
        chunks: list[_Chunk] = []
        entries: list[Entry] = []
        segment = self._current
        size = self._segments[segment].size
        state = self._segments[segment]
        start = (segment, size)
        if size >= self.segment_bytes // 4 and state.acked >= state.written:
            # Everything here reached the stream: start afresh so this file can go.
            chunks.append(_Chunk(segment, roll_after=True))
            segment += 1
            size = 0
        chunk = _Chunk(segment)
        chunks.append(chunk)
        counts: dict[int, int] = {}
        segment_bytes = self.segment_bytes
        buf = chunk.data
        in_chunk = 0
        for item in appends:
            for key, data in item.records:
                head = _key_head(key)
                framed = HEADER_BYTES + len(head) + len(data)
                if size > 0 and size + framed > segment_bytes:
                    counts[segment] = in_chunk
                    in_chunk = 0
                    chunk.roll_after = True
                    segment += 1
                    size = 0
                    chunk = _Chunk(segment)
                    chunks.append(chunk)
                    buf = chunk.data
                entries.append(Entry(segment, size, key, data, len(data) + len(key)))
                buf += _HEADER.pack(MAGIC, framed - HEADER_BYTES, zlib.crc32(data, zlib.crc32(head)))
                buf += head
                buf += data
                size += framed
                in_chunk += 1
        counts[segment] = in_chunk
        deletions, self._to_delete = self._to_delete, []
        do_sync = self.fsync == "always"
        try:
            if (
                not do_sync
                and not deletions
                and len(chunks) == 1
                and not chunks[0].roll_after
                and self._fd is not None
                and len(chunks[0].data) <= _INLINE_WRITE
            ):
                # A small append to the page cache costs less than the hop to a thread and back.
                self._write_chunks(chunks, False, [], start)
            else:
                async with self._io_lock:
                    await asyncio.to_thread(self._write_chunks, chunks, do_sync, deletions, start)
        except asyncio.CancelledError:
            self._forget(deletions)
            self._fail(appends, "the spool is closing")
            raise
        except Exception as exc:
            self._forget(deletions)
            reason = _write_failure(exc)
            if not isinstance(exc, OSError):
                log.exception("spool write failed unexpectedly")
            elif self.write_error is None:
                log.error("%s: %s; answering 503 until the spool can be written", reason, exc)
            self.write_error = reason
            self._fail(appends, reason)
            return
        if appends and self.write_error is not None:
            log.info("the spool can be written again")
            self.write_error = None
        for chunk in chunks:
            state = self._segments.setdefault(
                chunk.segment, _Segment(self.directory / _segment_name(chunk.segment))
            )
            state.size += len(chunk.data)
            state.written += counts.get(chunk.segment, 0)
            self._size += len(chunk.data)
            if chunk.roll_after:
                state.sealed = True
                self._current = chunk.segment + 1
                self._segments.setdefault(
                    self._current, _Segment(self.directory / _segment_name(self._current))
                )
                if state.acked >= state.written:
                    self._retire(chunk.segment)
        self._forget(deletions)
        self._pending_events += len(entries)
        for item in appends:
            self._queued_bytes -= item.nbytes
        if not do_sync:
            self._dirty = True
        self._publish()
        self.on_written(entries)
        for item in appends:
            if not item.future.done():
                item.future.set_result(None)

    def _fail(self, appends: list[_Append], reason: str) -> None:
        """Fail these appends: none of their records is in the spool."""
        error = SpoolUnwritable(reason)
        for item in appends:
            self._queued_bytes -= item.nbytes
            if not item.future.done():
                item.future.set_exception(error)
                # Marked retrieved: a client that hung up leaves nobody to await it, and the
                # failure is logged once above, not once per request.
                item.future.exception()
        self._publish()

    def _forget(self, deletions: list[int]) -> None:
        """Drop deleted segments from the books (their files went first thing in the write)."""
        for segment in deletions:
            gone = self._segments.pop(segment, None)
            if gone is not None:
                self._size -= gone.size

    def _abandon_current(self, fresh: int) -> None:
        """Seal the current segment at its last good frame and go on in segment `fresh`.

        For when a failed write could not be cut back: bytes past `size` are never read here.
        """
        old = self._current
        state = self._segments[old]
        state.sealed = True
        self._current = fresh
        self._segments[fresh] = _Segment(self.directory / _segment_name(fresh))
        self._abandon_to = None
        if state.acked >= state.written:
            self._retire(old)

    async def _probe(self) -> None:
        """While the last write failed: does the disk take bytes again? Clears `write_error` if so."""
        try:
            await asyncio.to_thread(self._probe_write)
        except OSError:
            return
        if self.write_error is not None:
            log.info("the spool disk takes writes again")
            self.write_error = None

    def _retire(self, segment: int) -> None:
        self._to_delete.append(segment)
        self._wake.set()

    async def _fsync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            if not self._dirty:
                continue
            # Under the lock: a roll closes and reopens the fd in a thread, and a duplicate of a
            # number closed in between would be EBADF (or worse, someone else's file).
            async with self._io_lock:
                fd = None if self._fd is None else os.dup(self._fd)
            if fd is None:
                continue
            self._dirty = False
            # A duplicate, so the writer may roll (close) the segment while this fsync runs.
            try:
                await asyncio.to_thread(_fsync_and_close, fd)
            except OSError as exc:
                self._dirty = True
                log.error("spool fsync failed, retrying: %s", exc)

    def _publish(self) -> None:
        metrics.SPOOL_BYTES.set(self._size)
        metrics.BUFFER_EVENTS.set(self._pending_events)

    # -- file work, on a thread ------------------------------------------------------------

    def _open_segment(self, segment: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / _segment_name(segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.fsync != "never":
            _fsync_dir(self.directory)

    def _close_fd(self, sync: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _write_chunks(self, chunks: list[_Chunk], sync: bool, deletions: list[int], start: Position) -> None:
        """Write the chunks from `start` on, rolling segments as marked; on any error, undo them.

        Acked segments go first: on a full disk their room is what the write needs.
        """
        self._delete(deletions)
        try:
            for chunk in chunks:
                if self._fd is None:
                    self._open_segment(chunk.segment)
                assert self._fd is not None
                view = memoryview(chunk.data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                if chunk.roll_after:
                    self._close_fd(self.fsync != "never")
                    self._open_segment(chunk.segment + 1)
                elif sync:
                    os.fsync(self._fd)
        except BaseException:
            self._undo(start, chunks[-1].segment + 1)
            raise

    def _undo(self, start: Position, last: int) -> None:
        """Cut the files of a failed write back to `start`, so no frame of it stays on disk.

        The fd is left closed; the next write opens the segment again (O_APPEND: at its end).
        When a file cannot be cut back, the next write moves on to a segment past `last`.
        """
        with contextlib.suppress(OSError):
            self._close_fd(False)
        segment, size = start
        try:
            for later in range(segment + 1, last + 1):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / _segment_name(later))
            os.truncate(self.directory / _segment_name(segment), size)
        except OSError as exc:
            log.error("spool: cannot cut a failed write back (%s); going on in a new segment", exc)
            self._abandon_to = last + 1

    def _probe_write(self) -> None:
        path = self.directory / _PROBE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, bytes(_PROBE_BYTES))
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _delete(self, segments: list[int]) -> None:
        for segment in segments:
            try:
                os.unlink(self.directory / _segment_name(segment))
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Every record in it is acked: left behind, it is only sent again after a restart.
                log.error("spool: cannot delete an acked segment: %s", exc)

    def _recover(self) -> dict[int, _Segment]:
        """Every segment left by an earlier run, each cut back to its last good frame."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: dict[int, _Segment] = {}
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                segment = int(path.stem)
            except ValueError:
                continue
            buf = path.read_bytes()
            frames, good_end, skipped = scan_frames(buf)
            if skipped:
                error = CorruptSpool(
                    f"{path}: {skipped} corrupt bytes in the middle; kept {len(frames)} good records, "
                    f"original saved as {path.name}.corrupt"
                )
                log.error("%s", error)
                os.replace(path, path.with_name(path.name + ".corrupt"))
                with open(path.with_name(path.name + ".tmp"), "wb") as out:
                    for _, key, data in frames:
                        out.write(frame(key, data))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(path.with_name(path.name + ".tmp"), path)
                good_end = path.stat().st_size
            elif good_end < len(buf):
                log.warning("%s: dropping a torn tail of %d bytes", path, len(buf) - good_end)
                with open(path, "r+b") as out:
                    out.truncate(good_end)
            if not frames:
                path.unlink()
                continue
            found[segment] = _Segment(path, size=good_end, written=len(frames), sealed=True)
        return found


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
