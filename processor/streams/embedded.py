"""`EmbeddedStream`: the `Stream` protocol on one SQLite file, for one machine.

An append-only log with Kinesis semantics (see `embedded_log`): shards over the 128-bit hash-key
space, per-shard sequence numbers, opaque iterators that expire, retention, split/merge/uniform
resharding. Several processes (front ends, consumers) may use the same file at once.

All SQLite work runs on one thread dedicated to this object, never on the event loop; `sqlite3`
errors are translated into `processor.errors` in `_error`, the one place that touches them. A put
is checked against the Kinesis limits before anything is written.

Puts commit in groups: the calls that arrive while the thread is busy wait in `_puts` and go to
the log together, in arrival order, as one transaction and one fsync (`SqliteLog.put`), each call
still answered with its own results or error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, TypeVar

import orjson

from processor.errors import (
    ExpiredIterator,
    InvalidRequest,
    StreamNotFound,
    StreamUnavailable,
)
from processor.streams.base import (
    MAX_GET_BYTES,
    MAX_GET_RECORDS,
    MAX_HASH_KEY,
    MAX_PUT_BYTES,
    MAX_PUT_RECORDS,
    MAX_RECORD_BYTES,
    GetRecordsResult,
    IteratorType,
    PutRecord,
    PutResult,
    StreamDescription,
    hash_key,
)
from processor.streams.embedded_log import LogError, NoSuchStream, Put, SqliteLog
from processor.uris import query_params, sqlite_path

__all__ = ["DEFAULT_STREAM_NAME", "ITERATOR_TTL", "RETENTION", "EmbeddedStream"]

DEFAULT_STREAM_NAME = "shardflow"
ITERATOR_TTL = 300.0
"""Seconds an iterator stays valid, as Kinesis's five minutes."""
RETENTION = 24 * 3600.0
"""Seconds a record is kept, as Kinesis's default 24 hours."""
MAX_PARTITION_KEY_CHARS = 256

T = TypeVar("T")


class _Waiting(NamedTuple):
    """A put_records call waiting for the next group commit."""

    records: Sequence[PutRecord]
    keys: list[int]
    future: asyncio.Future[list[PutResult]]


class EmbeddedStream:
    """A Kinesis-like stream stored in the SQLite file `path` under the stream name `name`."""

    max_put_records = MAX_PUT_RECORDS
    put_failures_keep_key_order = True
    """A put is one SQLite transaction: every record is stored, or none."""
    paces_puts = False

    def __init__(
        self,
        path: str | Path,
        name: str = DEFAULT_STREAM_NAME,
        *,
        iterator_ttl: float = ITERATOR_TTL,
        retention: float = RETENTION,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.iterator_ttl = iterator_ttl
        self.retention = retention
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._log: SqliteLog | None = None
        self._puts: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    def from_uri(cls, uri: str, **options: float) -> EmbeddedStream:
        """`sqlite:///rel/stream.db` or `sqlite:////abs/stream.db`, optionally `?name=NAME`."""
        name = query_params(uri).get("name") or DEFAULT_STREAM_NAME
        return cls(sqlite_path(uri), name, **options)

    def __repr__(self) -> str:
        return f"EmbeddedStream({str(self.path)!r}, {self.name!r})"

    async def __aenter__(self) -> EmbeddedStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the one boundary to SQLite ------------------------------------------------------------

    def _open_log(self) -> SqliteLog:
        if self._log is None:
            self._log = SqliteLog(
                self.path, self.name, busy_timeout=self.busy_timeout, retention=self.retention
            )
        return self._log

    async def _run(self, fn: Callable[[SqliteLog], T]) -> T:
        """Run `fn` on the stream's thread, raising what it raises."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embedded-{self.name}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._open_log()))

    async def _call(self, fn: Callable[[SqliteLog], T]) -> T:
        """Run `fn` on the stream's thread and translate what SQLite raises."""
        try:
            return await self._run(fn)
        except Exception as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from error.__cause__

    def _error(self, exc: Exception) -> Exception:
        """The `processor.errors` exception for what the log raised (`exc` itself if none fits).

        A new exception each time: one failed group commit answers several callers.
        """
        error: Exception
        if isinstance(exc, NoSuchStream):
            error = StreamNotFound(f"stream {self.name!r} does not exist in {self.path}")
        elif isinstance(exc, LogError):
            error = InvalidRequest(str(exc))
        else:
            if isinstance(exc, sqlite3.OperationalError | OSError):
                error = StreamUnavailable(f"embedded stream {self.path}: {exc}")
            elif isinstance(exc, sqlite3.Error):
                error = StreamUnavailable(f"embedded stream {self.path} is unusable: {exc}")
            else:
                return exc
            error.__cause__ = exc
        error.__suppress_context__ = True
        return error

    async def close(self) -> None:
        """Close the connection and its thread. Idempotent; a later call opens them again."""
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close_log() -> None:
            log, self._log = self._log, None
            if log is not None:
                log.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, close_log)
        finally:
            executor.shutdown(wait=False)

    # -- Stream --------------------------------------------------------------------------------

    async def create(self, shard_count: int) -> None:
        if shard_count < 1:
            raise InvalidRequest(f"shard count must be at least 1, got {shard_count}")
        await self._call(lambda log: log.create(shard_count))

    async def describe(self) -> StreamDescription:
        shards = await self._call(lambda log: log.describe())
        return StreamDescription(
            name=self.name,
            status="ACTIVE",
            shards=tuple(shards),
            retention_hours=max(1, round(self.retention / 3600)),
        )

    async def put_records(self, records: Sequence[PutRecord]) -> list[PutResult]:
        if not records:
            return []
        keys = _check_put(records)
        future: asyncio.Future[list[PutResult]] = asyncio.get_running_loop().create_future()
        self._puts.append(_Waiting(records, keys, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_puts(), name=f"embedded-{self.name}-puts")
        return await future

    async def _commit_puts(self) -> None:
        """Hand the waiting puts to the log in groups until none waits; answer each call."""
        group: list[_Waiting] = []
        try:
            while self._puts:
                group, self._puts = self._puts, []
                try:
                    outcomes = await self._put_group([(w.records, w.keys) for w in group])
                except Exception as exc:
                    outcomes = [exc] * len(group)
                for waiting, outcome in zip(group, outcomes, strict=True):
                    if waiting.future.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, Exception):
                        waiting.future.set_exception(self._error(outcome))
                    else:
                        waiting.future.set_result(outcome)
        except BaseException:
            for waiting in [*group, *self._puts]:
                waiting.future.cancel()
            self._puts = []
            raise
        finally:
            self._committer = None

    async def _put_group(self, calls: list[Put]) -> list[list[PutResult] | Exception]:
        return await self._run(lambda log: log.put(calls))

    async def get_shard_iterator(
        self,
        shard_id: str,
        iterator_type: IteratorType,
        *,
        sequence_number: str | None = None,
        timestamp: float | None = None,
    ) -> str:
        kind = IteratorType(iterator_type)
        if kind in (IteratorType.AT_SEQUENCE_NUMBER, IteratorType.AFTER_SEQUENCE_NUMBER):
            if sequence_number is None:
                raise InvalidRequest(f"{kind} needs a sequence number")
        elif kind is IteratorType.AT_TIMESTAMP:
            if timestamp is None:
                raise InvalidRequest("AT_TIMESTAMP needs a timestamp")
            if timestamp > time.time():
                raise InvalidRequest(
                    f"AT_TIMESTAMP timestamp {timestamp} is in the future, as Kinesis refuses"
                )
        local = await self._call(lambda log: log.position(shard_id, kind, sequence_number, timestamp))
        return self._iterator(shard_id, local)

    async def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> GetRecordsResult:
        if not 1 <= limit <= MAX_GET_RECORDS:
            raise InvalidRequest(f"limit must be between 1 and {MAX_GET_RECORDS}, got {limit}")
        shard_id, local = self._decode_iterator(iterator)
        result = await self._call(lambda log: log.read(shard_id, local, limit, MAX_GET_BYTES))
        return GetRecordsResult(
            records=result.records,
            next_iterator=None if result.at_end else self._iterator(shard_id, result.next_local),
            millis_behind_latest=result.millis_behind,
            child_shard_ids=result.child_shard_ids,
        )

    async def split_shard(self, shard_id: str, new_starting_hash_key: int | None = None) -> None:
        await self._call(lambda log: log.split_shard(shard_id, new_starting_hash_key))

    async def merge_shards(self, shard_id: str, adjacent_shard_id: str) -> None:
        await self._call(lambda log: log.merge_shards(shard_id, adjacent_shard_id))

    async def update_shard_count(self, target: int) -> None:
        if target < 1:
            raise InvalidRequest(f"target shard count must be at least 1, got {target}")
        await self._call(lambda log: log.update_shard_count(target))

    async def trim(self) -> int:
        """Delete records older than the retention now (puts also do it once in a while)."""
        return await self._call(lambda log: log.trim())

    # -- iterators -----------------------------------------------------------------------------

    def _iterator(self, shard_id: str, local: int) -> str:
        token = orjson.dumps([self.name, shard_id, local, time.time()])
        return base64.urlsafe_b64encode(token).decode("ascii")

    def _decode_iterator(self, iterator: str) -> tuple[str, int]:
        try:
            name, shard_id, local, issued = orjson.loads(base64.urlsafe_b64decode(iterator))
        except (ValueError, TypeError, binascii.Error):
            raise InvalidRequest(f"invalid shard iterator {iterator[:40]!r}") from None
        if name != self.name:
            raise InvalidRequest(f"shard iterator is for stream {name!r}, not {self.name!r}")
        age = time.time() - float(issued)
        if age > self.iterator_ttl:
            raise ExpiredIterator(
                f"shard iterator for {shard_id} expired {age - self.iterator_ttl:.1f}s ago"
                f" (valid for {self.iterator_ttl:g}s): get a new one from the last sequence read"
            )
        return str(shard_id), int(local)


_partition_key: Final = attrgetter("partition_key")
_data: Final = attrgetter("data")
_explicit_hash_key: Final = attrgetter("explicit_hash_key")


def _check_put(records: Sequence[PutRecord]) -> list[int]:
    """The hash key of every record; InvalidRequest naming the first limit a put breaks.

    A put well within the limits (ASCII keys, no explicit hash keys: what the front end sends) is
    checked in C-level passes over all records, 0.4 µs a record instead of 1; at any doubt the
    record-by-record check decides and names the record.
    """
    if len(records) > MAX_PUT_RECORDS:
        raise InvalidRequest(f"PutRecords takes at most {MAX_PUT_RECORDS} records, got {len(records)}")
    keys = list(map(_partition_key, records))
    key_sizes = list(map(len, keys))
    data_sizes = list(map(len, map(_data, records)))
    if (
        min(key_sizes) >= 1
        and max(key_sizes) <= MAX_PARTITION_KEY_CHARS
        and max(data_sizes) + max(key_sizes) <= MAX_RECORD_BYTES
        and sum(data_sizes) + sum(key_sizes) <= MAX_PUT_BYTES
        and all(map(str.isascii, keys))
        and list(map(_explicit_hash_key, records)).count(None) == len(records)
    ):
        return list(map(hash_key, keys))
    return _check_each(records)


def _check_each(records: Sequence[PutRecord]) -> list[int]:
    """`_check_put` record by record."""
    keys = []
    total = 0
    for i, record in enumerate(records):
        pk = record.partition_key
        if not 1 <= len(pk) <= MAX_PARTITION_KEY_CHARS:
            raise InvalidRequest(
                f"record {i}: partition key must be 1 to {MAX_PARTITION_KEY_CHARS} characters, got {len(pk)}"
            )
        size = len(record.data) + (len(pk) if pk.isascii() else len(pk.encode("utf-8")))
        if size > MAX_RECORD_BYTES:
            raise InvalidRequest(f"record {i}: data plus partition key is {size} bytes, over the 1 MiB limit")
        total += size
        explicit = record.explicit_hash_key
        if explicit is None:
            keys.append(hash_key(pk))
        elif 0 <= explicit <= MAX_HASH_KEY:
            keys.append(explicit)
        else:
            raise InvalidRequest(f"record {i}: explicit hash key {explicit} is outside 0..2^128-1")
    if total > MAX_PUT_BYTES:
        raise InvalidRequest(f"PutRecords payload is {total} bytes, over the 5 MiB limit")
    return keys
