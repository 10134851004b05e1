"""In-order, fenced commits of one shard's batches, with a bounded queue for back-pressure.

Batches are enriched concurrently, but their commits happen strictly in sequence order: batch N+1
is never committed before batch N, so the checkpoint only ever moves forward over a gap-free
prefix of the shard. The queue holds at most `max_in_flight` batches; the reader blocks on `put`
when it is full, so a slow warehouse slows reading instead of growing memory.

Consecutive batches already enriched when a commit starts are committed together (up to
`max_rows` rows, or one batch alone if larger; the checkpoint is the last one's): a warehouse
slower than the reader then gets fewer, larger transactions instead of a growing queue of small
ones. Merging keeps the order and the gap-free prefix, and drops a repeated `event_id` across
the merged batches as `process_records` does within one.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import orjson

from processor.errors import LeaseLost, RowsRejected, WarehouseUnavailable
from processor.event import OBJECT_FIELDS, STRING_FIELDS
from processor.metrics import SINK_COMMITS
from shard_consumer.pool import Processed
from sinks.base import Batch, DeadLetter, Fence, PageView, Sink

__all__ = ["PendingBatch", "ShardCommitter"]

log = logging.getLogger(__name__)

_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0


class _Empty(enum.Enum):
    EMPTY = enum.auto()


_EMPTY = _Empty.EMPTY


@dataclass(frozen=True, slots=True)
class PendingBatch:
    processed: asyncio.Future[Processed]
    """Usually the task enriching the batch; committed once it is done, in queue order."""
    checkpoint: str
    """Sequence number of the batch's last record, or SHARD_END."""
    records: int


def _event_text(row: PageView) -> str:
    """The event a refused row was made from, as JSON: what `dead-letters replay` re-validates
    and puts on the stream again once the warehouse takes it."""
    event: dict[str, object] = {}
    for name in _EVENT_FIELDS:
        value = getattr(row, name)
        if value is not None:
            event[name] = orjson.Fragment(value) if name in OBJECT_FIELDS else value
    return orjson.dumps(event).decode()


_EVENT_FIELDS = (*STRING_FIELDS, "ts", "received_at", *OBJECT_FIELDS)


class ShardCommitter:
    """Commits one shard's batches in order under one fence. Run `run()` as a task."""

    def __init__(
        self,
        warehouse: Sink,
        stream_name: str,
        shard_id: str,
        fence: Fence,
        *,
        max_in_flight: int = 4,
        max_rows: int = 10_000,
        commit_timeout: float = 60.0,
        on_warehouse: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._warehouse = warehouse
        self._stream_name = stream_name
        self.shard_id = shard_id
        self.fence = fence
        self._queue: asyncio.Queue[PendingBatch | None] = asyncio.Queue(max(1, max_in_flight))
        self._timeout = commit_timeout
        self._max_rows = max_rows
        self._on_warehouse = on_warehouse
        self.committed: str | None = None
        """The last checkpoint this committer made durable."""

    async def put(self, pending: PendingBatch) -> None:
        """Queue a batch behind the ones before it; waits while `max_in_flight` are queued."""
        await self._queue.put(pending)

    async def finish(self) -> None:
        """No more batches: `run()` returns once every queued batch is committed."""
        await self._queue.put(None)

    async def run(self) -> None:
        """Commit queued batches in order until `finish()`. Raises LeaseLost (nothing written)."""
        carried: PendingBatch | _Empty | None = _EMPTY
        while True:
            pending = await self._queue.get() if carried is _EMPTY else carried
            carried = _EMPTY
            if pending is None:
                return
            parts = [(pending, await pending.processed)]
            rows = len(parts[0][1].rows)
            while rows < self._max_rows and not self._queue.empty():
                following = self._queue.get_nowait()
                if following is None or not following.processed.done():
                    carried = following
                    break
                processed = following.processed.result()
                if rows + len(processed.rows) > self._max_rows:
                    carried = following
                    break
                parts.append((following, processed))
                rows += len(processed.rows)
            checkpoint = parts[-1][0].checkpoint
            await self._commit(self._batch(parts, checkpoint))
            self.committed = checkpoint

    def _batch(self, parts: list[tuple[PendingBatch, Processed]], checkpoint: str) -> Batch:
        if len(parts) == 1:
            rows: Sequence[PageView] = parts[0][1].rows
            letters: Sequence[DeadLetter] = parts[0][1].dead_letters
        else:
            seen: set[str] = set()
            merged: list[PageView] = []
            for _, processed in parts:
                for row in processed.rows:
                    if row.event_id not in seen:
                        seen.add(row.event_id)
                        merged.append(row)
            rows = merged
            letters = [letter for _, processed in parts for letter in processed.dead_letters]
        return Batch(
            stream=self._stream_name,
            shard_id=self.shard_id,
            rows=rows,
            dead_letters=letters,
            checkpoint=checkpoint,
            fence=self.fence,
        )

    async def _commit(self, batch: Batch) -> None:
        """Write one batch, retrying the same batch with capped back-off while the warehouse is down.

        A retry after a timeout is safe: rows are deduplicated by event_id and the checkpoint
        write is idempotent.
        """
        delay = _FIRST_RETRY
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._warehouse.write_batch(batch), self._timeout)
            except LeaseLost:
                raise  # counted by the sink; nothing of this batch is written
            except RowsRejected as exc:
                if not batch.rows:
                    raise
                await self._commit_apart(batch, exc)
                return
            except (WarehouseUnavailable, TimeoutError) as exc:
                SINK_COMMITS.labels("retried").inc()
                self._on_warehouse(False)
                log.warning(
                    "shard %s: commit failed (%s); retrying in %.1fs", self.shard_id, exc or "timeout", delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            SINK_COMMITS.labels("ok").inc()
            self._on_warehouse(True)
            elapsed = time.monotonic() - started
            log.debug("shard %s: committed %s in %.3fs", self.shard_id, batch.checkpoint, elapsed)
            return

    async def _commit_apart(self, batch: Batch, exc: RowsRejected) -> None:
        """The warehouse refused a value of `batch`: commit it in halves, down to each row it
        refuses, which is filed as a `load` dead letter instead, so one bad row never stops its
        shard. Every part but the last leaves the checkpoint as it was: a crash midway replays
        the whole batch, whose rows already written are skipped by event_id."""
        if batch.dead_letters:
            # the letters first, alone: a row is never filed for what a letter beside it broke
            await self._commit(replace(batch, rows=[], checkpoint=None))
            batch = replace(batch, dead_letters=[])
        rows = batch.rows
        if len(rows) == 1:
            row = rows[0]
            log.error("shard %s: the warehouse refused event %s; filed as a dead letter: %s",
                      self.shard_id, row.event_id, exc)  # fmt: skip
            letter = DeadLetter(
                stage="load",
                reason=str(exc),
                payload=_event_text(row),
                shard_id=self.shard_id,
                key=f"load:{self.shard_id}:{row.event_id}",
            )
            await self._commit(replace(batch, rows=[], dead_letters=[letter]))
            return
        half = len(rows) // 2
        await self._commit(replace(batch, rows=rows[:half], checkpoint=None))
        await self._commit(replace(batch, rows=rows[half:]))
