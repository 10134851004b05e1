"""Decode and enrich batches of records on a pool of worker processes.

A batch travels to a worker as two plain lists (sequence numbers, record bytes) and comes back
as plain tuples and dead letters: one pickled task per batch, never one per record. Rows cross
as plain tuples because pickling a NamedTuple runs Python code per row (`__getnewargs__`), five
times the cost of the tuple; the parent re-tags them as `PageView` without copying. Small
batches, and every batch when `workers` is 1, are processed without the hand-off (see
`WorkerPool.process`), since pickling costs more than it saves there.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

from processor.event import DeadLetterRecord, EventError, decode_record
from processor.streams.base import Record
from shard_consumer.enrich import parse_agent, record_to_page_view, to_page_view
from sinks.base import DeadLetter, PageView

__all__ = ["Processed", "WorkerPool", "dead_letter_key", "default_workers", "process_records"]

log = logging.getLogger(__name__)

_MAX_PAYLOAD_CHARS = 256 * 1024


class Processed(NamedTuple):
    rows: list[PageView]
    dead_letters: list[DeadLetter]


def _payload(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return text if len(text) <= _MAX_PAYLOAD_CHARS else text[:_MAX_PAYLOAD_CHARS] + "...[truncated]"


def dead_letter_key(stage: str, shard_id: str, sequence_number: str, sub_sequence_number: int = 0) -> str:
    """The dedup key of a letter made from a stream position: a replayed batch makes the same."""
    return f"{stage}:{shard_id}:{sequence_number}:{sub_sequence_number}"


def process_records(
    shard_id: str,
    sequence_numbers: Sequence[str],
    datas: Sequence[bytes],
    anonymize_ip: bool,
    sub_sequence_numbers: Sequence[int] | None = None,
) -> Processed:
    """Rows for the events, dead letters for the rest: undecodable -> `decode`, enrichment
    failure -> `transform`, dead-letter records -> their own stage. Never raises for bad input.

    Each record first takes the typed fast path (`record_to_page_view`); what it doubts takes
    `decode_record` and `to_page_view`, which name the problem. A second record with an
    `event_id` already in this batch (a producer retry) is dropped here;
    across batches the warehouse's primary key drops it. Every letter gets a key (the front
    end's id on ingest letters, else the stream position), so the warehouse files it once.
    """
    rows: list[PageView] = []
    letters: list[DeadLetter] = []
    seen: set[str] = set()
    for i, (seq, data) in enumerate(zip(sequence_numbers, datas, strict=True)):
        row = record_to_page_view(data, shard_id, seq, anonymize_ip=anonymize_ip)
        if row is not None:
            if row.event_id not in seen:
                seen.add(row.event_id)
                rows.append(row)
            continue
        sub = sub_sequence_numbers[i] if sub_sequence_numbers else 0
        try:
            decoded = decode_record(data)
        except EventError as exc:
            key = dead_letter_key("decode", shard_id, seq, sub)
            letters.append(DeadLetter("decode", str(exc), _payload(data), shard_id, seq, key))
            continue
        if isinstance(decoded, DeadLetterRecord):
            key = decoded.id or dead_letter_key(decoded.stage, shard_id, seq, sub)
            letters.append(DeadLetter(decoded.stage, decoded.reason, decoded.payload, shard_id, seq, key))
            continue
        event_id = decoded["event_id"]
        if event_id in seen:
            continue
        try:
            row = to_page_view(decoded, shard_id, seq, anonymize_ip=anonymize_ip)
        except Exception as exc:  # enrichment is third-party parsing: any failure is this record's
            reason = f"{type(exc).__name__}: {exc}"
            key = dead_letter_key("transform", shard_id, seq, sub)
            letters.append(DeadLetter("transform", reason, _payload(data), shard_id, seq, key))
            continue
        seen.add(event_id)
        rows.append(row)
    return Processed(rows, letters)


def _process_plain(
    shard_id: str,
    sequence_numbers: Sequence[str],
    datas: Sequence[bytes],
    anonymize_ip: bool,
    sub_sequence_numbers: Sequence[int] | None,
) -> tuple[list[tuple[Any, ...]], list[DeadLetter]]:
    """`process_records` in a worker, rows as plain tuples (cheap to pickle)."""
    rows, letters = process_records(shard_id, sequence_numbers, datas, anonymize_ip, sub_sequence_numbers)
    return [tuple(row) for row in rows], letters


_as_page_view = tuple.__new__
_SWITCH_INTERVAL = 0.001
_switch = {"pools": 0, "saved": 0.0}
"""How many thread pools run with the short switch interval, and the interval before the first."""


def _shorten_switch_interval(on: bool) -> None:
    if on:
        if _switch["pools"] == 0:
            _switch["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch["saved"], _SWITCH_INTERVAL))
        _switch["pools"] += 1
    else:
        _switch["pools"] -= 1
        if _switch["pools"] == 0:
            sys.setswitchinterval(_switch["saved"])


_WARM_UP_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"


def _warm_up() -> int:
    """Load the user-agent parsers (their regexes compile on first use, ~0.3 s) before any batch."""
    parse_agent.__wrapped__(_WARM_UP_AGENT)
    return os.getpid()


def default_workers() -> int:
    """One worker per core beyond the first, which the event loop needs for reading and loading.

    On two cores that is one worker, and one worker is a thread, not a process: there pickling
    each batch across a process boundary costs more than the core it would free.
    """
    return max(1, (os.cpu_count() or 1) - 1)


class WorkerPool:
    """Enrichment workers shared by every shard of a consumer process. `async with` or start/close."""

    def __init__(self, workers: int = 0, *, anonymize_ip: bool = False, inline_below: int = 64) -> None:
        self.workers = workers if workers > 0 else default_workers()
        self._anonymize_ip = anonymize_ip
        self._inline_below = inline_below
        self._executor: Executor | None = None
        self._short_switch = False
        self._restart_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the workers and wait until each answers. Idempotent."""
        if self._executor is not None:
            return
        if self.workers == 1:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="shardflow-enrich")
            # The enrichment thread is CPU-bound: with the default 5 ms GIL switch interval the
            # event loop (commits, reads, lease renewals) waits up to 5 ms each time it wakes.
            # 1 ms measured +15% records/s (benchmarks/consume, 2 cores); restored on close.
            _shorten_switch_interval(True)
            self._short_switch = True
            await asyncio.get_running_loop().run_in_executor(self._executor, _warm_up)
            return
        await self._start_processes()

    async def _start_processes(self) -> None:
        # forkserver: never fork the event loop's process with its threads and sockets.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["shard_consumer.pool"])
        executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        self._executor = executor
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(executor, _warm_up) for _ in range(self.workers)))

    async def _replace(self, broken: Executor) -> None:
        """A worker died (the OOM killer, a crash): a broken process pool never recovers, so
        start a new one, once for all the batches that saw the old one break."""
        async with self._restart_lock:
            if self._executor is not broken:
                return
            log.warning("an enrichment worker process died; starting the worker pool anew")
            self._executor = None
            broken.shutdown(wait=False, cancel_futures=True)
            await self._start_processes()

    async def process(self, shard_id: str, records: Sequence[Record]) -> Processed:
        """Rows and dead letters for `records`, in their order."""
        seqs = [r.sequence_number for r in records]
        datas = [r.data for r in records]
        subs: list[int] | None = [r.sub_sequence_number for r in records]
        if not any(subs or ()):
            subs = None
        if self._executor is None or len(records) < self._inline_below:
            return process_records(shard_id, seqs, datas, self._anonymize_ip, subs)
        loop = asyncio.get_running_loop()
        if isinstance(self._executor, ThreadPoolExecutor):
            return await loop.run_in_executor(
                self._executor, process_records, shard_id, seqs, datas, self._anonymize_ip, subs
            )
        executor = self._executor
        try:
            plain, letters = await loop.run_in_executor(
                executor, _process_plain, shard_id, seqs, datas, self._anonymize_ip, subs
            )
        except BrokenProcessPool:
            await self._replace(executor)
            if self._executor is None:
                return process_records(shard_id, seqs, datas, self._anonymize_ip, subs)
            # one more try on the new workers; a batch that kills a worker again fails its shard
            plain, letters = await loop.run_in_executor(
                self._executor, _process_plain, shard_id, seqs, datas, self._anonymize_ip, subs
            )
        return Processed([_as_page_view(PageView, row) for row in plain], letters)

    async def close(self) -> None:
        """Stop the workers after the tasks they hold. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
        if self._short_switch:
            self._short_switch = False
            _shorten_switch_interval(False)

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
