"""A loopback TCP proxy in front of a real server, for fault tests (asyncpg's fuzzer does the same).

A test points its client at `proxy.port` and then:
- `cut()`: reset every open connection (RST, as a crashed server or a dropped route does);
- `block()`: refuse new connections (each is reset at once) until `restore()`;
- `cut_on(pattern)`: reset everything the moment a client sends `pattern` (e.g. b"COMMIT"),
  before it reaches the server (`deliver=False`) or just after (`deliver=True`, the server
  commits but the client never hears it);
- `cut_after(nbytes)`: reset everything once `nbytes` more bytes went from clients to the server
  (mid-COPY, mid-LOAD DATA).

It runs on the caller's loop (`async with TcpProxy(...)`) or in a thread of its own for
synchronous tests (`with TcpProxy(...).in_thread() as proxy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["TcpProxy"]


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards `listen_host`:`port` to `target_host`:`target_port`; see the module docstring."""

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.port = 0
        self.connections_made = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._blocked = False
        self._pattern: bytes | None = None
        self._deliver = False
        self._budget: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._cut_all()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[TcpProxy]:
        """Run the proxy on a loop in a background thread (for synchronous tests)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            loop.close()

    # -- faults ----------------------------------------------------------------------------

    def _call(self, fn: object) -> None:
        assert callable(fn)
        loop = self._loop
        if loop is not None and self._thread is not None and threading.current_thread() is not self._thread:
            done = threading.Event()

            def run() -> None:
                fn()
                done.set()

            loop.call_soon_threadsafe(run)
            done.wait(10)
        else:
            fn()

    def cut(self) -> None:
        """Reset every open connection now."""
        self._call(self._cut_all)

    def block(self) -> None:
        """Reset open connections and refuse new ones until `restore()`."""

        def go() -> None:
            self._blocked = True
            self._cut_all()

        self._call(go)

    def restore(self) -> None:
        """Accept and forward again; cancel any armed trigger."""

        def go() -> None:
            self._blocked = False
            self._pattern = None
            self._budget = None

        self._call(go)

    def cut_on(self, pattern: bytes, *, deliver: bool = False) -> None:
        """Reset all connections when a client sends `pattern`; once."""

        def go() -> None:
            self._pattern, self._deliver = pattern, deliver

        self._call(go)

    def cut_after(self, nbytes: int) -> None:
        """Reset all connections once `nbytes` more bytes went client -> server; once."""

        def go() -> None:
            self._budget = nbytes

        self._call(go)

    @property
    def armed(self) -> bool:
        """A trigger is set and has not fired yet."""
        return self._pattern is not None or self._budget is not None

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def _cut_all(self, graceful: asyncio.StreamWriter | None = None) -> None:
        self.cuts += 1
        for pair in list(self._pairs):
            _reset(pair.client)
            if pair.server is not None and pair.server is graceful:
                pair.server.close()  # flushes what was written, then FIN: the server sees it all
            else:
                _reset(pair.server)
            for task in pair.tasks:
                task.cancel()
        self._pairs.clear()

    # -- forwarding ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            _reset(writer)
            return
        pair = _Pair(writer)
        self._pairs.add(pair)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            self._pairs.discard(pair)
            _reset(writer)
            return
        if pair not in self._pairs:  # cut while connecting
            _reset(up_writer)
            return
        self.connections_made += 1
        pair.server = up_writer
        pair.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, pair, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, pair, upstream=False)),
        ]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair, *, upstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if upstream and self._triggered(data, writer):
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        if pair in self._pairs:
            self._pairs.discard(pair)
            _reset(pair.client)
            _reset(pair.server)
            for task in pair.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    def _triggered(self, data: bytes, writer: asyncio.StreamWriter) -> bool:
        if self._pattern is not None and self._pattern in data:
            self._pattern = None
            if self._deliver:
                writer.write(data)
                self._cut_all(graceful=writer)
            else:
                self._cut_all()
            return True
        if self._budget is not None:
            self._budget -= len(data)
            if self._budget <= 0:
                self._budget = None
                self._cut_all()
                return True
        return False
