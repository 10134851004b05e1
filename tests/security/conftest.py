"""A real front end on loopback, run on a thread of its own so sync tests (hypothesis, raw sockets,
subprocess fuzzers) can hit it over real HTTP while its event loop keeps serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.embedded import EmbeddedStream

WRITE_KEY = "sk_live_Zq8RmT2vXw9K"


@dataclass
class Served:
    port: int
    front: FrontEnd
    stream: EmbeddedStream
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve(config: IngestConfig, stream_path: Path) -> Iterator[Served]:
    """Run a FrontEnd on a thread until the generator is closed."""
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    holder: list[Served] = []
    failure: list[BaseException] = []

    async def main() -> None:
        stream = EmbeddedStream.from_uri(f"sqlite:///{stream_path}")
        await stream.create(2)
        try:
            async with FrontEnd(config, stream) as front:
                holder.append(Served(front.port, front, stream, asyncio.get_running_loop()))
                stop.append(asyncio.Event())
                ready.set()
                await stop[0].wait()
        finally:
            await stream.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="front-end", daemon=True)
    thread.start()
    ready.wait(30)
    if failure:
        raise failure[0]
    try:
        yield holder[0]
    finally:
        holder[0].loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)


@pytest.fixture
def keyed_front(tmp_path: Path) -> Iterator[Served]:
    """A front end that requires WRITE_KEY, with short timeouts for hostile-client tests."""
    config = IngestConfig(
        port=0,
        spool_dir=tmp_path / "spool",
        write_keys=(WRITE_KEY,),
        drain_timeout=2.0,
        idle_timeout=2.0,
        request_timeout=3.0,
        max_body=256 * 1024,
    )
    yield from serve(config, tmp_path / "stream.db")
