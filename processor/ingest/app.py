"""The aiohttp application of one front end, its resources wired with `cleanup_ctx`.

Resources start in order and stop in reverse: the spool opens (recovering what a crash left),
then the flusher starts; on shutdown the flusher drains to the stream for up to
`drain_timeout` (a hard bound, whatever the disk or the stream does) and stops, then the spool
writes what is queued, fsyncs and closes. Whatever the stream did not take stays in the spool
for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from processor.buffer import Buffer
from processor.flusher import Flusher
from processor.ingest.access import Access
from processor.ingest.config import IngestConfig
from processor.ingest.handlers import Handlers
from processor.ingest.intake import Intake
from processor.spool import Spool
from processor.streams.base import Stream

__all__ = ["FLUSHER", "SPOOL", "make_app"]

log = logging.getLogger(__name__)

_DRAIN_GRACE = 1.0
"""Seconds past drain_timeout before a drain still waiting on the disk is cut short."""

SPOOL = web.AppKey("spool", Spool)
BUFFER = web.AppKey("buffer", Buffer)
FLUSHER = web.AppKey("flusher", Flusher)


def make_app(config: IngestConfig, stream: Stream) -> web.Application:
    """The application; nothing is opened until its runner sets it up."""
    app = web.Application(
        client_max_size=config.max_body, handler_args={"max_field_size": 16384, "lingering_time": 2.0}
    )
    spool = Spool(
        config.spool_dir,
        fsync=config.fsync,
        fsync_interval=config.fsync_interval,
        segment_bytes=config.spool_segment_bytes,
        max_bytes=config.spool_max_bytes,
    )
    buffer = Buffer(config.buffer_max_bytes)
    spool.on_written = buffer.offer
    flusher = Flusher(
        stream,
        spool,
        buffer,
        concurrency=config.flush_concurrency,
        linger=config.flush_linger,
        put_timeout=config.put_timeout,
        probe_interval=config.probe_interval,
    )
    app[SPOOL] = spool
    app[BUFFER] = buffer
    app[FLUSHER] = flusher

    async def spool_ctx(app: web.Application) -> AsyncIterator[None]:
        await spool.open()
        if spool.recovered_events:
            log.info(
                "the spool holds %d events from an earlier run; sending them again", spool.recovered_events
            )
        yield
        await spool.close()

    async def flusher_ctx(app: web.Application) -> AsyncIterator[None]:
        await flusher.start()
        yield
        try:
            try:
                async with asyncio.timeout(config.drain_timeout + _DRAIN_GRACE):
                    drained = await flusher.drain(config.drain_timeout)
            except TimeoutError:
                drained = False
            if not drained:
                log.warning(
                    "drain timed out after %.1f s; %d events stay in the spool for the next start",
                    config.drain_timeout,
                    spool.pending_events,
                )
        finally:
            await flusher.stop()

    app.cleanup_ctx.append(spool_ctx)
    app.cleanup_ctx.append(flusher_ctx)
    handlers = Handlers(config, Access(config), Intake(config, spool), lambda: readiness(app, config))
    app.add_routes(handlers.routes())
    return app


def readiness(app: web.Application, config: IngestConfig) -> str | None:
    """None when ready to take events, else why not ("spool full" from 90 % of its limit on,
    the spool's write error while its last write failed, the stream's)."""
    reasons: list[str] = []
    spool = app[SPOOL]
    if spool.write_error is not None:
        reasons.append(spool.write_error)
    if spool.size_bytes >= config.spool_max_bytes * 0.9:
        reasons.append(f"spool full: {spool.size_bytes} of {config.spool_max_bytes} bytes")
    stream_error = app[FLUSHER].stream_error
    if stream_error is not None:
        reasons.append(stream_error)
    return "; ".join(reasons) or None
