"""A clean stop leaves nothing acknowledged in the spool, so the next start puts nothing again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from processor.ingest.app import SPOOL
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.spool import Spool
from processor.streams.base import PutRecord, PutResult
from processor.streams.embedded import EmbeddedStream
from tests.ingest.conftest import url
from tests.support.wait import eventually


class CountingStream(EmbeddedStream):
    """The real embedded stream, counting the records put through it."""

    puts = 0

    async def put_records(self, records: Sequence[PutRecord]) -> list[PutResult]:
        results = await super().put_records(records)
        self.puts += len(records)
        return results

    def put_at_least(self, n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return self.puts >= n

        return check


async def test_restart_after_a_clean_stop_puts_nothing_again(
    tmp_path: Path, base_config: IngestConfig
) -> None:
    stream = CountingStream.from_uri(f"sqlite:///{tmp_path}/counted.db")
    assert isinstance(stream, CountingStream)
    await stream.create(2)
    try:
        async with FrontEnd(base_config, stream) as front, aiohttp.ClientSession() as client:
            body = b"".join(b'{"event_id": "e%d", "anonymous_id": "a%d"}\n' % (i, i % 9) for i in range(300))
            async with client.post(
                url(front, "/v1/events"), data=body, headers={"Content-Type": "application/x-ndjson"}
            ) as r:
                assert r.status == 202
            async with client.post(
                url(front, "/v1/events"), data=b'{"url": 5}', headers={"Content-Type": "text/plain"}
            ) as r:
                assert r.status == 202  # rejected: a dead letter travels the stream too
                assert (await r.json())["rejected"][0]["error"] == "url: must be a string, not a number"
            await eventually(stream.put_at_least(301), timeout=10, what="301 records put")
        assert stream.puts == 301
        assert not list(base_config.spool_dir.glob("*.seg"))
        async with FrontEnd(base_config, stream) as front:
            assert front.app[SPOOL].recovered_events == 0
            await eventually(_ready(front), timeout=10, what="ready")
        assert stream.puts == 301
    finally:
        await stream.close()


def _ready(front: FrontEnd) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return front.ready() is None

    return check


async def test_a_clean_close_keeps_what_the_stream_has_not_acknowledged(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        await spool.append([("k", b'{"event_id": "a"}'), ("k", b'{"event_id": "b"}')])
    async with Spool(tmp_path) as spool:
        assert spool.recovered_events == 2
