"""The flusher: sends spooled records to the stream in PutRecords batches, retrying until acked.

Records are taken in spool order (memory first, then the spill on disk) into batches of at most
500 records and 5 MiB, with up to `concurrency` PutRecords calls in flight. Calls are kept full. A
call that would not fill its batch first waits up to `linger` for more records (a producer's
linger; 100-event requests at 33k events/s: 229 → 71 calls a second), and while it is in flight
the records behind it gather until they fill a batch or it settles (Nagle's rule; single-event
requests: ≈ 14 → ≈ 45 records a call). A batch retries only its failed records (per-record error
codes) with capped exponential backoff and full jitter, longer when throttled; a whole-call
failure (`StreamUnavailable`, `Throttled`, a timeout) backs off and retries the same records
forever while newer events wait on disk.

Order per partition key: a record is never sent while an earlier record with the same key sits in
a batch still in flight or being retried; it waits and goes out after that batch settles.
A record leaves the spool (`Spool.ack`) only once the stream has acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain, islice, repeat
from operator import attrgetter

from processor import metrics
from processor.buffer import Buffer
from processor.errors import CorruptSpool, InvalidRequest, ShardflowError, StreamNotFound, Throttled
from processor.spool import Entry, Spool
from processor.streams.base import MAX_PUT_BYTES, PutRecord, Stream

__all__ = ["Flusher"]

log = logging.getLogger(__name__)

_SIZE = attrgetter("size")
_KEY = attrgetter("partition_key")
_ERROR_CODE = attrgetter("error_code")
_DATA = attrgetter("data")
_NEW_TUPLE = tuple.__new__


def _put_records(entries: Sequence[Entry]) -> list[PutRecord]:
    """The PutRecord of each entry; `tuple.__new__` skips the NamedTuple's Python `__new__`."""
    return list(
        map(_NEW_TUPLE, repeat(PutRecord), zip(map(_DATA, entries), map(_KEY, entries), repeat(None)))
    )


_FULL_BYTES = MAX_PUT_BYTES // 2
"""A batch this big counts as full for Nagle's rule, though records may not pack it to 5 MiB."""

RETRIABLE_CODES = frozenset({"ProvisionedThroughputExceededException", "InternalFailure"})
THROTTLE_CODE = "ProvisionedThroughputExceededException"


class Flusher:
    """Moves records from spool and buffer to the stream. Idempotent start()/stop()."""

    def __init__(
        self,
        stream: Stream,
        spool: Spool,
        buffer: Buffer,
        *,
        concurrency: int = 8,
        put_timeout: float = 10.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        probe_interval: float = 2.0,
        max_held_bytes: int | None = None,
        linger: float = 0.01,
    ) -> None:
        self.stream = stream
        self.spool = spool
        self.buffer = buffer
        self.concurrency = max(1, concurrency)
        self.put_timeout = put_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.probe_interval = probe_interval
        self.max_held_bytes = max_held_bytes or 2 * self.concurrency * MAX_PUT_BYTES
        self.linger = linger
        """Seconds a call that would not fill its batch waits for more records, when no such call
        is in flight already (then Nagle's rule gathers the records instead)."""
        self.stream_error: str | None = "the stream has not answered yet"
        """Why the stream is thought unreachable; None once it answered."""
        self._last_ok = 0.0
        self._ready: deque[Entry] = deque()
        self._unblocked: deque[Entry] = deque()
        self._waiting: dict[str, deque[Entry]] = {}
        self._busy: set[str] = set()
        """Keys with a record in a call in flight: no other call takes a record of theirs."""
        self._held_bytes = 0
        self._slots = asyncio.Semaphore(self.concurrency)
        self._settled = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._partial = 0
        """Calls in flight that did not fill a put: while one is, the next waits to fill."""
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.spool.recovered is not None:
            self.buffer.spill(self.spool.recovered)
        self._task = asyncio.create_task(self._dispatch_loop(), name="flusher")
        self._probe_task = asyncio.create_task(self._probe_loop(), name="flusher-probe")

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s until the stream holds every spooled record; True if it does."""
        await self.spool.flush()
        deadline = time.monotonic() + timeout
        while self.spool.pending_events > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), min(left, 0.05))
        return True

    async def stop(self) -> None:
        """Cancel the calls in flight; their records stay in the spool for the next start."""
        tasks = [t for t in (self._task, self._probe_task, *self._batches) if t is not None]
        self._task = self._probe_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Flusher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except Exception:
                self._slots.release()
                log.exception("the flusher hit an unexpected error; going on in a second")
                await asyncio.sleep(1.0)
                continue
            partial = self._is_partial(batch)
            self._partial += partial
            task = asyncio.create_task(self._send(batch, partial))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _next_batch(self) -> list[Entry]:
        while True:
            self.buffer.changed.clear()
            await self._fill()
            if not self._partial and (self._ready or self._unblocked) and self._gathering():
                await self._linger()
            if not (self._partial and self._gathering()):
                batch = self._build()
                if batch:
                    return batch
            await self.buffer.changed.wait()

    async def _linger(self) -> None:
        """Let records gather for up to `linger` s before a call that would not fill its batch."""
        deadline = asyncio.get_running_loop().time() + self.linger
        while self._gathering() and (left := deadline - asyncio.get_running_loop().time()) > 0:
            self.buffer.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.buffer.changed.wait()
            await self._fill(top_up=True)

    def _gathering(self) -> bool:
        """Too few records ready to fill a put (Nagle's rule: one small call in flight at most)."""
        ready = (self._ready, self._unblocked)
        return self._small(chain.from_iterable(ready), sum(map(len, ready)))

    def _is_partial(self, batch: list[Entry]) -> bool:
        return self._small(batch, len(batch))

    def _small(self, entries: Iterable[Entry], count: int) -> bool:
        """Whether `count` records (`entries`) would not fill a call."""
        if count >= self.stream.max_put_records:
            return False
        size: int = sum(map(_SIZE, entries))
        return size < _FULL_BYTES

    async def _fill(self, *, top_up: bool = False) -> None:
        """Fill the ready queue from memory, else from the spill on disk, within the hold cap;
        while records gather behind a small call, top it up from memory."""
        if self._held_bytes >= self.max_held_bytes:
            return
        if self._ready:
            room = self.stream.max_put_records - len(self._ready)
            if (top_up or self._partial) and room > 0:
                entries = self.buffer.take(room, _FULL_BYTES)
                self._held_bytes += sum(map(_SIZE, entries))
                self._ready.extend(entries)
            return
        entries = self.buffer.take(self.stream.max_put_records * 2, MAX_PUT_BYTES * 2)
        spilled = self.buffer.spilled_at
        if not entries and spilled is not None:
            try:
                entries, after = await self.spool.read(spilled, 2 * MAX_PUT_BYTES)
            except CorruptSpool as exc:
                log.error("%s; skipping the rest of that segment", exc)
                after = (spilled[0] + 1, 0)
            self.buffer.caught_up(after, self.spool.end)
        self._held_bytes += sum(map(_SIZE, entries))
        self._ready.extend(entries)

    def _build(self) -> list[Entry]:
        """The next PutRecords batch, never overtaking an earlier record of a key still in flight.

        Where the stream may fail a record yet store a later one of its key in the same call,
        a batch carries at most one record per key; the rest wait their turn.
        """
        batch = self._take_ready() if not self._unblocked else None
        if batch is not None:
            return batch
        batch = []
        keys: set[str] = set()
        size = 0
        full = False
        limit = self.stream.max_put_records
        one_per_key = not self.stream.put_failures_keep_key_order
        busy = self._busy
        for queue in (self._unblocked, self._ready):
            while queue and not full:
                entry = queue[0]
                key = entry.partition_key
                if key in busy or (one_per_key and key in keys):
                    queue.popleft()
                    self._waiting.setdefault(key, deque()).append(entry)
                    continue
                if len(batch) >= limit or (batch and size + entry.size > MAX_PUT_BYTES):
                    # Stop here, not just for this queue: a later queue may hold a later record
                    # of a key whose earlier record did not fit.
                    full = True
                    break
                queue.popleft()
                batch.append(entry)
                keys.add(key)
                size += entry.size
        busy |= keys
        return batch

    def _take_ready(self) -> list[Entry] | None:
        """`_build` for the usual case, in C-level passes: the head of the ready queue makes a
        batch as it is, no key of it in flight (nor twice in it, where that matters). None when
        the record-by-record loop must decide."""
        ready = self._ready
        n = min(len(ready), self.stream.max_put_records)
        if n == 0:
            return None
        batch = list(islice(ready, n))
        sizes = list(accumulate(map(_SIZE, batch)))
        if sizes[-1] > MAX_PUT_BYTES:
            n = max(1, bisect_right(sizes, MAX_PUT_BYTES))
            del batch[n:]
        keys = set(map(_KEY, batch))
        if not self._busy.isdisjoint(keys) or (len(keys) < n and not self.stream.put_failures_keep_key_order):
            return None
        if n == len(ready):
            ready.clear()
        else:
            for _ in repeat(None, n):
                ready.popleft()
        self._busy |= keys
        return batch

    def _settle(self, batch: Sequence[Entry]) -> None:
        """A batch is done (acked or given up): free its keys and let their waiters go next."""
        keys = set(map(_KEY, batch))
        self._busy -= keys
        waiting = self._waiting
        if waiting:
            for key in keys.intersection(waiting):
                self._unblocked.extend(waiting.pop(key))
        self._slots.release()
        self.buffer.changed.set()
        self._settled.set()

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, batch: list[Entry], partial: bool = False) -> None:
        """Put `batch` until every record is acknowledged or refused for good.

        A call the stream refuses as invalid is split in halves, sent in order, down to the one
        record at fault: a bad record is dropped alone, never with the good ones beside it.
        """
        parts: deque[list[Entry]] = deque([batch])
        attempt = 0
        try:
            while parts:
                pending = parts.popleft()
                try:
                    async with asyncio.timeout(None if self.stream.paces_puts else self.put_timeout):
                        results = await self.stream.put_records(_put_records(pending))
                except InvalidRequest as exc:
                    if len(pending) > 1:
                        half = len(pending) // 2
                        parts.extendleft((pending[half:], pending[:half]))
                        continue
                    log.error("the stream refused a record as invalid, dropped: %s", exc)
                    metrics.PUT_RECORDS.labels("failed").inc()
                    self._done(pending)
                    continue
                except (ShardflowError, TimeoutError, OSError) as exc:
                    self._unreachable(exc)
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt, throttled=isinstance(exc, Throttled)))
                    parts.appendleft(pending)
                    continue
                except Exception as exc:
                    # A backend bug must not strand records: say so loudly and keep retrying.
                    log.exception("put_records failed unexpectedly; retrying")
                    self._unreachable(exc)
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt, throttled=False))
                    parts.appendleft(pending)
                    continue
                self._reachable()
                if len(results) == len(pending) and not any(map(_ERROR_CODE, results)):
                    metrics.PUT_RECORDS.labels("ok").inc(len(pending))
                    self._done(pending)
                    continue
                failed: list[Entry] = []
                done: list[Entry] = []
                throttled = False
                for entry, result in zip(pending, results, strict=True):
                    if result.ok:
                        done.append(entry)
                    elif result.error_code in RETRIABLE_CODES:
                        failed.append(entry)
                        throttled = throttled or result.error_code == THROTTLE_CODE
                    else:
                        log.error(
                            "the stream refused a record for good (%s: %s); dropping it",
                            result.error_code,
                            result.error_message,
                        )
                        metrics.PUT_RECORDS.labels("failed").inc()
                        done.append(entry)
                if done:
                    metrics.PUT_RECORDS.labels("ok").inc(len(done))
                    self._done(done)
                if failed:
                    metrics.PUT_RECORDS.labels("retried").inc(len(failed))
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt, throttled=throttled))
                    parts.appendleft(failed)
        finally:
            self._partial -= partial
            self._settle(batch)

    def _done(self, entries: Sequence[Entry]) -> None:
        self.spool.ack(entries)
        self._held_bytes -= sum(map(_SIZE, entries))

    def _backoff(self, attempt: int, *, throttled: bool) -> float:
        base = self.backoff_base * (4 if throttled else 1)
        return random.uniform(0, min(self.backoff_cap, base * 2 ** min(attempt, 16)))

    def _unreachable(self, exc: BaseException) -> None:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        if isinstance(exc, Throttled):
            return
        if isinstance(exc, StreamNotFound):
            reason = f"stream not found: {reason}"
        if self.stream_error is None:
            log.warning("the stream is unreachable, events wait in the spool: %s", reason)
        self.stream_error = f"stream unreachable: {reason}"

    def _reachable(self) -> None:
        if self.stream_error is not None and self._last_ok:
            log.info("the stream answers again")
        self.stream_error = None
        self._last_ok = time.monotonic()

    async def _probe_loop(self) -> None:
        """Ask the stream how it is when no put has told us lately, so /readyz stays truthful."""
        while True:
            if time.monotonic() - self._last_ok >= self.probe_interval:
                try:
                    async with asyncio.timeout(min(self.put_timeout, 5.0)):
                        await self.stream.describe()
                except (ShardflowError, TimeoutError, OSError) as exc:
                    self._unreachable(exc)
                else:
                    self._reachable()
            await asyncio.sleep(self.probe_interval)
