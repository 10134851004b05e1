"""One stream suite for every backend: `make_stream` builds a fresh stream of the `backend` param.

`embedded` is an `EmbeddedStream` in a file of the test's own; `kinesalite` is a `KinesisStream`
on a real kinesalite server on loopback (one per session, a stream of its own per test). A test
that an emulator cannot run overrides the param with `@embedded_only("why")`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.streams.base import Stream
from processor.streams.embedded import EmbeddedStream
from tests.support.kinesalite import kinesalite

BACKENDS = ["embedded", "kinesalite"]

MakeStream = Callable[..., Awaitable[Stream]]


def embedded_only(why: str) -> pytest.MarkDecorator:
    """Run a conformance test on the embedded backend only; `why` says what the emulator lacks."""
    return pytest.mark.parametrize("backend", [pytest.param("embedded", id=f"embedded-only:{why}")])


@pytest.fixture(scope="session")
def kinesalite_endpoint() -> Iterator[str]:
    with kinesalite() as endpoint:
        yield endpoint


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_stream(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MakeStream]:
    """`await make_stream(shards, **embedded_options)`: a new stream, created unless shards is None."""
    made: list[Stream] = []

    async def make(shards: int | None = 4, **options: Any) -> Stream:
        name = f"conf-{uuid.uuid4().hex[:10]}"
        stream: Stream
        if backend == "embedded":
            stream = EmbeddedStream(tmp_path / "stream.db", name, **options)
        else:
            kinesis = pytest.importorskip("processor.streams.kinesis")
            endpoint = request.getfixturevalue("kinesalite_endpoint")
            stream = kinesis.KinesisStream.from_uri(f"kinesis://{name}?region=us-east-1&endpoint={endpoint}")
        made.append(stream)
        if shards is not None:
            await stream.create(shards)
        return stream

    yield make
    for stream in made:
        await stream.close()
