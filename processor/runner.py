"""Running the long-lived roles (`run`, `ingest`, `consume`) until a signal, then draining.

Start order: stream (created when absent by `run`, and by any role on the embedded stream),
consumer (which creates the warehouse schema), front end, so that once the port answers the
whole path works. The front end never depends on the stream to start: when Kinesis answers
errors, is unreachable or the stream is missing (an operator may be creating it), that is logged
in one line and the front end listens and spools at once; `ingest` retries in the background with
capped backoff, `consume` (and the consumer half of `run`) waits, retrying, until the stream
answers or a signal asks it to stop. Only a fatal error (bad URI, credentials refused) ends the
start, with exit status 2. On SIGINT or SIGTERM the drain runs in the order that loses nothing:

    front end stops accepting ─► buffer flushed to the stream (drain_timeout; the rest stays
    in the spool) ─► consumer reads what is left (drain_timeout) ─► in-flight batches commit ─►
    leases released ─► worker pool, warehouse and stream closed ─► exit 0

A second signal forces an immediate exit: nothing is lost, because the spool keeps what was not
put and the checkpoints commit with the rows, so the next start resumes where this one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from processor import __version__, metrics
from processor.config import Settings
from processor.errors import ConfigError, FatalError, RetriableError, StreamNotFound
from processor.logs import log_context
from processor.statusline import StatusLine, snapshot
from processor.streams.base import Stream
from processor.uris import mask_uri, sqlite_path
from sinks.base import Warehouse

if TYPE_CHECKING:
    from processor.ingest.server import FrontEnd
    from shard_consumer.consumer import Consumer

__all__ = ["Role", "Runner", "ensure_dirs", "open_stream_for", "open_warehouse_for"]

log = logging.getLogger("processor.runner")

_EXAMPLE = '{"url":"https://shop.example/p?utm_source=x","anonymous_id":"a1"}'

FORCED_EXIT = 130
"""Exit status after a second signal (as a shell reports an interrupted command)."""

_STREAM_TRY_SECONDS = 5.0
"""Deadline of one attempt to reach the stream at start."""
_STREAM_RETRY_FIRST = 0.5
_STREAM_RETRY_CAP = 15.0
"""Capped exponential backoff between attempts to reach a stream that is not there yet."""


class Role(enum.StrEnum):
    RUN = "run"
    INGEST = "ingest"
    CONSUME = "consume"

    @property
    def ingests(self) -> bool:
        return self is not Role.CONSUME

    @property
    def consumes(self) -> bool:
        return self is not Role.INGEST


def ensure_dirs(settings: Settings) -> None:
    """Create the data directory and the directories of SQLite files named by the URIs."""
    settings.common.data_dir.mkdir(parents=True, exist_ok=True)
    for uri in (settings.common.stream, settings.common.warehouse):
        if uri.startswith("sqlite:"):
            sqlite_path(uri).parent.mkdir(parents=True, exist_ok=True)


def open_stream_for(settings: Settings) -> Stream:
    """The stream of `settings`: a connection pool sized to the flusher's PutRecords in flight (plus
    room for the readers), and KPL aggregation on write when asked for (Kinesis only)."""
    from processor.streams import open_stream

    aggregate = settings.ingest.aggregate and settings.common.stream.startswith("kinesis:")
    return open_stream(
        settings.common.stream,
        max_connections=max(16, settings.ingest.flush_concurrency * 2),
        aggregate=aggregate,
    )


def open_warehouse_for(settings: Settings) -> Warehouse:
    from sinks import open_warehouse

    return open_warehouse(settings.common.warehouse)


async def ensure_stream(stream: Stream, shards: int) -> tuple[int, bool]:
    """(open shards, created?) after creating the stream with `shards` shards when it is absent."""
    try:
        description = await stream.describe()
        return len(description.open_shards), False
    except StreamNotFound:
        await stream.create(shards)
        description = await stream.describe()
        return len(description.open_shards), True


async def _reach_stream(stream: Stream, shards: int, create: bool) -> tuple[int, bool]:
    """(open shards, created?) within one attempt's deadline; raises what the stream answered."""
    async with asyncio.timeout(_STREAM_TRY_SECONDS):
        if create:
            return await ensure_stream(stream, shards)
        return len((await stream.describe()).open_shards), False


def _why_not(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {_STREAM_TRY_SECONDS:.0f} s"
    if isinstance(exc, StreamNotFound):
        return f"{exc} (create it with `shardflow stream create`)"
    return str(exc) or type(exc).__name__


async def wait_for_stream(
    stream: Stream, shards: int, create: bool, stop: asyncio.Event
) -> tuple[int, bool] | None:
    """Retry reaching the stream with capped backoff until it answers; None if `stop` is set first.

    A missing stream, a server error or no answer is retried (logged when the reason changes);
    a fatal error (bad configuration, credentials refused) is raised.
    """
    delay = _STREAM_RETRY_FIRST
    last = ""
    while not stop.is_set():
        try:
            return await _reach_stream(stream, shards, create)
        except (RetriableError, StreamNotFound, TimeoutError, OSError) as exc:
            reason = _why_not(exc)
            if reason != last:
                log.warning("the stream is not available yet, retrying: %s", reason)
                last = reason
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(_STREAM_RETRY_CAP, delay * 2)
    return None


@dataclass
class _Signals:
    """First SIGINT/SIGTERM requests the drain; the second forces exit."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0
    on_force: Callable[[], None] = lambda: os._exit(FORCED_EXIT)

    def __call__(self, signum: int) -> None:
        self.count += 1
        if self.count == 1:
            log.info("%s: draining (send again to force)", signal.Signals(signum).name)
            self.stop.set()
            return
        sys.stderr.write(f"\n{signal.Signals(signum).name} again: forced exit; the next start resumes\n")
        sys.stderr.flush()
        self.on_force()


class Runner:
    """One process playing `role` until asked to stop; `run()` returns the exit status."""

    def __init__(self, settings: Settings, role: Role, *, out: TextIO | None = None) -> None:
        self.settings = settings
        self.role = role
        self._out = out or sys.stdout
        self._signals = _Signals()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._signals, signum)
        try:
            await self._run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return 0

    @contextlib.contextmanager
    def _sigint_ignored(self) -> Iterator[None]:
        """SIGINT ignored while the worker pool starts, so its processes inherit the ignore.

        Ctrl-C on a terminal signals the whole process group; workers that took it would die
        mid-batch instead of letting this process drain them.
        """
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            loop.add_signal_handler(signal.SIGINT, self._signals, signal.SIGINT)

    async def _run(self) -> None:
        settings, role = self.settings, self.role
        await asyncio.to_thread(ensure_dirs, settings)
        async with AsyncExitStack() as stack:
            stream = open_stream_for(settings)
            stack.push_async_callback(stream.close)
            shards = settings.common.shards
            embedded = settings.common.stream.startswith("sqlite:")
            create = role is Role.RUN or embedded
            reached: tuple[int, bool] | None
            if embedded:
                reached = await ensure_stream(stream, shards)
            else:
                try:
                    reached = await _reach_stream(stream, shards, create)
                except (RetriableError, StreamNotFound, TimeoutError, OSError) as exc:
                    log.warning(
                        "the stream %s is not available yet (%s); %s",
                        mask_uri(settings.common.stream),
                        _why_not(exc),
                        "listening and spooling meanwhile, retrying in the background"
                        if role.ingests
                        else "waiting for it",
                    )
                    reached = None
            front = None
            if role.ingests and reached is None:
                front = await self._start_front(stack, stream)
            if reached is None and role.consumes:
                reached = await wait_for_stream(stream, shards, create, self._signals.stop)
                if reached is None:
                    await self._drain(front, None)
                    return
            elif reached is None:
                task = asyncio.create_task(self._reach_later(stream, shards, create), name="stream-wait")
                stack.push_async_callback(_cancelled, task)
            consumer = await self._start_consumer(stack, stream) if role.consumes else None
            port = 0
            if role.ingests:
                if front is None:
                    front = await self._start_front(stack, stream)
                port = front.port
            elif consumer is not None:
                port = await self._start_health(stack, consumer)
            open_shards, created = reached if reached is not None else (None, False)

            self._banner(port, open_shards, created, consumer.consumer_id if consumer else None)
            status = StatusLine(
                interval=settings.common.status_interval, ingest=role.ingests, consume=role.consumes
            )
            async with status:
                await self._signals.stop.wait()
            await self._drain(front, consumer)

    async def _start_front(self, stack: AsyncExitStack, stream: Stream) -> FrontEnd:
        from processor.ingest.server import FrontEnd

        front = FrontEnd(self.settings.ingest, stream)
        stack.push_async_callback(front.stop)
        await _listen(front.start, self.settings.ingest.host, self.settings.ingest.port)
        return front

    async def _reach_later(self, stream: Stream, shards: int, create: bool) -> None:
        """Keep trying the stream behind a front end that already spools; say when it answers."""
        while True:
            try:
                reached = await wait_for_stream(stream, shards, create, self._signals.stop)
            except FatalError as exc:
                log.error("the stream refuses this front end (%s); events wait in the spool", exc)
                await asyncio.sleep(_STREAM_RETRY_CAP)
                continue
            if reached is not None:
                log.info("the stream answers: %d open shards; sending the spool", reached[0])
            return

    async def _start_consumer(self, stack: AsyncExitStack, stream: Stream) -> Consumer:
        from shard_consumer.consumer import Consumer

        warehouse = open_warehouse_for(self.settings)
        # The consumer starts the warehouse itself and retries, so that `consume` stays up (and
        # /readyz says why) while the warehouse is down.
        stack.push_async_callback(warehouse.close)
        consumer = Consumer(self.settings.consumer, stream, warehouse)
        stack.push_async_callback(consumer.stop)
        with self._sigint_ignored(), log_context(consumer_id=consumer.consumer_id):
            await consumer.start()
        return consumer

    async def _start_health(self, stack: AsyncExitStack, consumer: Consumer) -> int:
        """/healthz, /readyz and /metrics for a process without a front end; the bound port."""
        from processor.status_server import StatusServer

        host, port = self.settings.ingest.host, self.settings.ingest.port
        server = StatusServer(host, port, lambda: None if consumer.warehouse_up else "warehouse unreachable")
        stack.push_async_callback(server.stop)
        await _listen(server.start, host, port)
        return server.port

    async def _drain(self, front: FrontEnd | None, consumer: Consumer | None) -> None:
        """Stop accepting, flush to the stream, let the consumer load what is left, commit, release."""
        started = time.monotonic()
        if front is not None:
            await front.stop()
            left = snapshot().buffered
            if left:
                log.warning("front end stopped; %d events stay in the spool for the next start", left)
            else:
                log.info("front end stopped; everything accepted is on the stream")
        if consumer is not None:
            if front is not None:
                await _wait_consumed(
                    self.settings.ingest.drain_timeout, self.settings.consumer.idle_poll_interval
                )
            # Shielded: a cancelled caller must not cut the final commit and lease release short.
            await asyncio.shield(consumer.stop())
            log.info("consumer stopped; batches committed and leases released")
        final = snapshot()
        log.info(
            "stopped in %.1fs: accepted %d, in stream %d, loaded %d",
            time.monotonic() - started,
            final.accepted,
            final.in_stream,
            final.loaded,
        )

    def _banner(self, port: int, open_shards: int | None, created: bool, consumer_id: str | None) -> None:
        s = self.settings
        host = s.ingest.host
        shown_host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "") else host
        lines = [f"shardflow {__version__} {self.role.value}"]
        if self.role.ingests:
            lines.append(
                f"  listening    http://{host}:{port}  (POST /v1/events, GET /healthz /readyz /metrics)"
            )
        elif port:
            lines.append(f"  health       http://{host}:{port}  (GET /healthz /readyz /metrics)")
        shown = "not available yet, retrying" if open_shards is None else f"{open_shards} open shards"
        lines.append(f"  stream       {mask_uri(s.common.stream)}  ({shown}{', created' if created else ''})")
        if self.role.consumes:
            lines.append(f"  warehouse    {mask_uri(s.common.warehouse)}")
            lines.append(f"  consumer     {consumer_id}")
        lines.append(f"  data dir     {Path(s.common.data_dir).resolve()}")
        if self.role is Role.RUN:
            where = ""
            if s.sources.get("warehouse") == "flag":
                where = f" --warehouse '{mask_uri(s.common.warehouse)}'"
            elif s.sources.get("data_dir") == "flag":
                where = f" --data-dir '{s.common.data_dir}'"
            lines += [
                "",
                "Try next:",
                f"  curl -d '{_EXAMPLE}' {shown_host}:{port}/v1/events",
                f'  shardflow query "select count(*) from page_views"{where}',
                f"  open http://{shown_host}:{port}/metrics",
            ]
        lines += ["", "Ctrl-C (or SIGTERM) drains and stops; twice forces.", ""]
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _listen(start: Callable[[], object], host: str, port: int) -> None:
    try:
        result = start()
        if asyncio.iscoroutine(result):
            await result
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None


def _records_read() -> float:
    return sum(
        sample.value
        for family in metrics.CONSUMER_RECORDS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def _wait_consumed(timeout: float, idle_poll: float) -> None:
    """Wait, at most `timeout`, until the consumer has read all this process put and gone idle.

    Best effort by design: what is not read now is read after the next start, from the
    checkpoint, so the deadline bounds only how long a stop takes.
    """
    deadline = time.monotonic() + timeout
    quiet_for = max(3 * idle_poll, 0.3)
    last, last_change = _records_read(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = _records_read()
        if now != last:
            last, last_change = now, time.monotonic()
            continue
        cur = snapshot()
        if cur.max_lag_ms == 0 and now >= cur.in_stream and time.monotonic() - last_change >= quiet_for:
            return
    log.warning("drain timeout: what is left stays in the stream for the next start")
