"""`FrontEnd`: the ingest HTTP server as one long-lived component.

    async with FrontEnd(config, stream) as front:   # listening on front.port
        ...
                                                    # stopped: drained within drain_timeout

`stop()` stops accepting, lets requests in progress finish, drains to the stream within
`drain_timeout` and leaves the rest in the spool. The stream belongs to the caller.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from processor import gc_tuning
from processor.ingest.app import make_app, readiness
from processor.ingest.config import IngestConfig
from processor.streams.base import Stream

__all__ = ["FrontEnd"]


class FrontEnd:
    def __init__(self, config: IngestConfig, stream: Stream) -> None:
        self.config = config
        self.stream = stream
        self.port = config.port
        self.app = make_app(config, stream)
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        self._stopping = False

    async def start(self) -> None:
        """Open the spool, start the flusher, listen. Returns once listening. Idempotent."""
        async with self._lock:
            if self._runner is not None:
                return
            runner = web.AppRunner(
                self.app,
                access_log=None,
                keepalive_timeout=self.config.idle_timeout,
                shutdown_timeout=max(1.0, self.config.request_timeout),
                handle_signals=False,
            )
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.config.host, self.config.port, backlog=1024)
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
            server = site._server
            sockets = getattr(server, "sockets", None) or ()
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
            self._stopping = False
            self._runner = runner
            gc_tuning.busy(True)

    async def stop(self) -> None:
        """Stop accepting, finish requests, drain within drain_timeout, close. Idempotent."""
        async with self._lock:
            runner, self._runner = self._runner, None
            if runner is None:
                return
            self._stopping = True
            try:
                await runner.cleanup()
            finally:
                gc_tuning.busy(False)

    def ready(self) -> str | None:
        """None when ready for events, else the reason (also what /readyz answers)."""
        if self._runner is None:
            return "stopping" if self._stopping else "not started"
        return readiness(self.app, self.config)

    async def __aenter__(self) -> FrontEnd:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
