"""Stream backends behind one protocol; `open_stream` picks one by URI."""

from __future__ import annotations

from processor.errors import ConfigError
from processor.streams.base import (
    SHARD_END,
    GetRecordsResult,
    IteratorType,
    PutRecord,
    PutResult,
    Record,
    ShardInfo,
    Stream,
    StreamDescription,
)

__all__ = [
    "SHARD_END",
    "GetRecordsResult",
    "IteratorType",
    "PutRecord",
    "PutResult",
    "Record",
    "ShardInfo",
    "Stream",
    "StreamDescription",
    "open_stream",
]


def open_stream(uri: str, *, max_connections: int = 16, aggregate: bool = False) -> Stream:
    """A stream for `sqlite:///path` (embedded) or `kinesis://NAME?region=..&endpoint=..`.

    The stream is not contacted here; the first call connects. `aggregate` (KPL aggregation on
    write) applies to Kinesis only.
    """
    if uri.startswith("sqlite:"):
        from processor.streams.embedded import EmbeddedStream

        return EmbeddedStream.from_uri(uri)
    if uri.startswith("kinesis:"):
        from processor.streams.kinesis import KinesisStream

        return KinesisStream.from_uri(uri, max_connections=max_connections, aggregate=aggregate)
    raise ConfigError(f"unknown stream URI {uri!r}: expected sqlite:///path or kinesis://NAME")
