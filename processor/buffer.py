"""The buffer: spooled records held in memory for the flusher, bounded by bytes.

Every record is on disk first (`processor.spool`); the buffer only saves re-reading it. While
the buffer has room, written records go to memory in spool order. Once a record does not fit,
the buffer marks where it "spilled" and from then on keeps nothing in memory: the flusher reads
from that position in the spool until it has caught up with the writer, and only then does the
buffer take records again. So the flusher always sees records in spool order, and memory stays
under `max_bytes` however long the stream is down.

Memory means allocated memory, not just record bytes: orjson hands back each record in a buffer
of 4-8 KiB, so a backlog of 600-byte events would take 7-14 times its budget. Once the
buffer holds more than a small share of `max_bytes` (a backlog is forming), records it takes are
copied to right-sized bytes; in steady flow they pass through as they are, at no cost.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from itertools import accumulate, islice
from operator import attrgetter

from processor.spool import Entry, Position

__all__ = ["Buffer"]

_SIZE = attrgetter("size")
_COMPACT_SHARE = 64
"""Records offered while the buffer holds more than max_bytes / this are copied to right size."""


class Buffer:
    """Records between the spool writer and the flusher. Use from one event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self._bytes = 0
        self.spilled_at: Position | None = None
        """Where the records that live only on disk begin; None while memory holds them all."""
        self.changed = asyncio.Event()
        """Set when records arrive; the flusher clears it before it looks."""

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def spill(self, position: Position) -> None:
        """Records from `position` on are to be read from disk (recovery on start)."""
        if self.spilled_at is None or position < self.spilled_at:
            self.spilled_at = position
        self.changed.set()

    def offer(self, entries: list[Entry]) -> None:
        """Hold newly written records in memory while they fit; else mark the spill."""
        compact = self._bytes > self.max_bytes // _COMPACT_SHARE
        if self.spilled_at is None:
            total = sum(map(_SIZE, entries))
            if self._bytes + total <= self.max_bytes:
                if compact:
                    for entry in entries:
                        entry.data = bytes(memoryview(entry.data))
                self._entries.extend(entries)
                self._bytes += total
                if entries:
                    self.changed.set()
                return
        for entry in entries:
            if self.spilled_at is not None:
                break
            if self._bytes + entry.size > self.max_bytes and self._entries:
                self.spilled_at = entry.position
                break
            if compact:
                entry.data = bytes(memoryview(entry.data))
            self._entries.append(entry)
            self._bytes += entry.size
        if entries:
            self.changed.set()

    def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        """Up to `max_records` records (at least one if any) from memory, in spool order."""
        if not self._entries or max_records < 1:
            return []
        taken = list(islice(self._entries, max_records))
        ends = list(accumulate(map(_SIZE, taken)))
        count = max(bisect_right(ends, max_bytes), 1)
        del taken[count:]
        popleft = self._entries.popleft
        for _ in range(count):
            popleft()
        self._bytes -= ends[count - 1]
        return taken

    def caught_up(self, position: Position, end: Position) -> None:
        """The flusher has read the spill up to `position`; `end` is the writer's position now."""
        if self.spilled_at is None:
            return
        self.spilled_at = None if position >= end else position
