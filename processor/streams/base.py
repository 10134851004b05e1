"""The `Stream` seam: what the front end and the consumers need of Kinesis, and nothing more.

Every backend (the embedded SQLite log, Kinesis through aiobotocore) implements `Stream` with the
semantics of Kinesis Data Streams: shards own contiguous ranges of the 128-bit hash-key space, a
record goes to the shard whose range holds MD5(partition key), sequence numbers are decimal
strings that increase within a shard (compare them with `int()`), iterators expire after five
minutes, and resharding closes parent shards and opens children that name them.

Errors: backends raise only `processor.errors` types. `put_records` reports per-record failure
in its results instead of raising, as PutRecords does; a whole-call failure raises
`StreamUnavailable` or `Throttled` (retry) or `StreamNotFound`/`InvalidRequest` (do not).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "MAX_GET_BYTES",
    "MAX_GET_RECORDS",
    "MAX_HASH_KEY",
    "MAX_PUT_BYTES",
    "MAX_PUT_RECORDS",
    "MAX_RECORD_BYTES",
    "SHARD_END",
    "GetRecordsResult",
    "IteratorType",
    "PutRecord",
    "PutResult",
    "Record",
    "ShardInfo",
    "Stream",
    "StreamDescription",
    "hash_key",
    "shard_for_hash",
]

MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
"""Data plus partition key, as Kinesis counts it."""
MAX_GET_RECORDS = 10_000
MAX_GET_BYTES = 10 * 1024 * 1024
MAX_HASH_KEY = 2**128 - 1
SHARD_END = "SHARD_END"
"""Checkpoint value of a closed shard whose every record is committed."""


def hash_key(partition_key: str) -> int:
    """The 128-bit hash key Kinesis derives from a partition key: MD5 of its UTF-8 bytes.

    Remembered, as the same visitors send event after event: in a plain dict, emptied when full,
    as an LRU's bookkeeping on a miss costs more than the MD5 (1.0 against 0.75 µs; every key of
    a busy site may be new)."""
    key = _HASH_KEYS.get(partition_key)
    if key is None:
        if len(_HASH_KEYS) >= _HASH_KEYS_KEPT:
            _HASH_KEYS.clear()
        key = _HASH_KEYS[partition_key] = int.from_bytes(_md5(partition_key.encode("utf-8")).digest())
    return key


_HASH_KEYS: dict[str, int] = {}
_HASH_KEYS_KEPT = 65_536
try:
    # CPython's own MD5: for a short key 0.75 µs against 1.7 for OpenSSL 3's, whose every new
    # hash object first looks the algorithm up
    from _md5 import md5 as _md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a Python built without it
    _md5 = hashlib.md5


class IteratorType(enum.StrEnum):
    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"
    AT_SEQUENCE_NUMBER = "AT_SEQUENCE_NUMBER"
    AFTER_SEQUENCE_NUMBER = "AFTER_SEQUENCE_NUMBER"
    AT_TIMESTAMP = "AT_TIMESTAMP"


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard as ListShards describes it. `ending_sequence` is None while the shard is open."""

    shard_id: str
    starting_hash_key: int
    ending_hash_key: int
    parent_shard_ids: tuple[str, ...] = ()
    starting_sequence: str = "0"
    ending_sequence: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ending_sequence is None

    def holds(self, key: int) -> bool:
        return self.starting_hash_key <= key <= self.ending_hash_key


@dataclass(frozen=True, slots=True)
class StreamDescription:
    name: str
    status: str
    """ACTIVE, CREATING, UPDATING or DELETING, as Kinesis says."""
    shards: tuple[ShardInfo, ...]
    retention_hours: int = 24

    @property
    def open_shards(self) -> tuple[ShardInfo, ...]:
        return tuple(s for s in self.shards if s.is_open)


def shard_for_hash(shards: Sequence[ShardInfo], key: int) -> ShardInfo:
    """The open shard whose hash-key range holds `key`."""
    for shard in shards:
        if shard.is_open and shard.holds(key):
            return shard
    raise LookupError(f"no open shard holds hash key {key}")


class PutRecord(NamedTuple):
    """One record for PutRecords; a NamedTuple, as the flusher builds one per event sent."""

    data: bytes
    partition_key: str
    explicit_hash_key: int | None = None


@dataclass(frozen=True, slots=True)
class PutResult:
    """Per-record outcome of PutRecords: either (shard_id, sequence_number) or an error code.

    Error codes are Kinesis's: `ProvisionedThroughputExceededException` and `InternalFailure`
    are worth retrying; nothing else that PutRecords reports per record is.
    """

    shard_id: str | None = None
    sequence_number: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


class Record(NamedTuple):
    """One record as GetRecords returns it.

    A NamedTuple, not a frozen dataclass: a read builds thousands of them, and a tuple is made
    in a third of the time (the embedded stream even builds them straight from SQLite rows).
    """

    sequence_number: str
    partition_key: str
    data: bytes
    approximate_arrival: float
    """Epoch seconds when the stream accepted the record."""
    sub_sequence_number: int = 0
    """Position inside a KPL-aggregated record; 0 for plain records."""


@dataclass(frozen=True, slots=True)
class GetRecordsResult:
    records: tuple[Record, ...]
    next_iterator: str | None
    """None once a closed shard has been read to its end (then checkpoint SHARD_END)."""
    millis_behind_latest: int = 0
    child_shard_ids: tuple[str, ...] = field(default=())


@runtime_checkable
class Stream(Protocol):
    """A Kinesis-like stream. Implementations are safe to share between tasks of one loop."""

    name: str
    max_put_records: int
    """User records one `put_records` call may take: 500 (`MAX_PUT_RECORDS`) for plain streams;
    more for a stream that packs them into fewer Kinesis records (KPL aggregation)."""
    put_failures_keep_key_order: bool
    """True when a `put_records` call that fails a record never stores a later record of the same
    partition key (all-or-nothing puts; KPL aggregation, which holds a shard back after a failure).
    When False (plain PutRecords), a sender that must keep per-key order puts at most one record
    of a key in one call."""
    paces_puts: bool
    """True when `put_records` may first wait for write capacity the stream keeps track of (a
    rate limit per shard) and every call it then makes has a timeout of its own: a caller then
    sets no deadline around it, as waiting for capacity is not the stream failing to answer."""

    async def create(self, shard_count: int) -> None:
        """Create the stream with `shard_count` shards over the whole hash-key space; wait until ACTIVE.

        Idempotent when the stream exists with any shard count.
        """
        ...

    async def describe(self) -> StreamDescription:
        """All shards, open and closed (within retention), with parents. Raises StreamNotFound."""
        ...

    async def put_records(self, records: Sequence[PutRecord]) -> list[PutResult]:
        """Append up to `max_put_records` records; one result per record, in order.

        A plain stream sends them as one PutRecords call (at most 500 records and 5 MiB); an
        aggregating stream may pack and split them over several calls, each within every limit.
        Raises InvalidRequest before sending when a limit is broken.
        """
        ...

    async def get_shard_iterator(
        self,
        shard_id: str,
        iterator_type: IteratorType,
        *,
        sequence_number: str | None = None,
        timestamp: float | None = None,
    ) -> str:
        """An opaque iterator valid for five minutes. AT/AFTER_SEQUENCE_NUMBER need `sequence_number`;
        AT_TIMESTAMP needs `timestamp` (epoch seconds)."""
        ...

    async def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> GetRecordsResult:
        """Up to `limit` records (and at most 10 MiB) from the iterator's position.

        Raises ExpiredIterator when the iterator is older than five minutes.
        """
        ...

    async def split_shard(self, shard_id: str, new_starting_hash_key: int | None = None) -> None:
        """Close `shard_id` and open two children; the split point defaults to the middle."""
        ...

    async def merge_shards(self, shard_id: str, adjacent_shard_id: str) -> None:
        """Close two shards with adjacent hash ranges and open one child covering both."""
        ...

    async def update_shard_count(self, target: int) -> None:
        """Scale to `target` open shards of uniform width, as UpdateShardCount does."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...
