"""Fixtures for the front end: a real embedded stream, a real server on loopback, a real client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from processor.event import DeadLetterRecord, decode_record
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.base import IteratorType, Stream
from processor.streams.embedded import EmbeddedStream

FrontFactory = Callable[..., contextlib.AbstractAsyncContextManager[FrontEnd]]


@pytest.fixture
async def stream(tmp_path: Path) -> AsyncIterator[EmbeddedStream]:
    s = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await s.create(2)
    yield s
    await s.close()


@pytest.fixture
def base_config(tmp_path: Path) -> IngestConfig:
    return IngestConfig(port=0, spool_dir=tmp_path / "spool", drain_timeout=5.0, probe_interval=0.2)


@pytest.fixture
def make_front(base_config: IngestConfig, stream: Stream) -> FrontFactory:
    @contextlib.asynccontextmanager
    async def make(stream_: Stream | None = None, **overrides: Any) -> AsyncIterator[FrontEnd]:
        async with FrontEnd(replace(base_config, **overrides), stream_ or stream) as front:
            yield front

    return make


@pytest.fixture
async def front(make_front: FrontFactory) -> AsyncIterator[FrontEnd]:
    async with make_front() as f:
        yield f


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def url(front: FrontEnd, path: str) -> str:
    return f"http://127.0.0.1:{front.port}{path}"


async def read_stream(stream: Stream) -> list[dict[str, Any] | DeadLetterRecord]:
    """Every record on every shard, decoded."""
    out: list[dict[str, Any] | DeadLetterRecord] = []
    description = await stream.describe()
    for shard in description.shards:
        iterator: str | None = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
        while iterator:
            result = await stream.get_records(iterator)
            out.extend(decode_record(r.data) for r in result.records)
            if not result.records:
                break
            iterator = result.next_iterator
    return out


async def events_on_stream(stream: Stream) -> list[dict[str, Any]]:
    return [r for r in await read_stream(stream) if isinstance(r, dict)]


async def dead_letters_on_stream(stream: Stream) -> list[DeadLetterRecord]:
    return [r for r in await read_stream(stream) if isinstance(r, DeadLetterRecord)]


def dumps(value: object) -> bytes:
    return orjson.dumps(value)
