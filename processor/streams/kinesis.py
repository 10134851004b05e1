"""Kinesis Data Streams through aiobotocore, within every per-shard service limit.

One long-lived aiobotocore session and client per `KinesisStream`, with a connection pool of
`max_connections`, so TLS handshakes and credential look-ups happen once. Every call has a
timeout; botocore's retries are off because shardflow retries itself (the flusher retries only
the failed records of a PutRecords call, the consumer re-reads from its checkpoint).

Writes are paced by adaptive per-shard token buckets (1,000 records/s, 1 MiB/s) keyed by the shard
each record is predicted to land on from the cached shard map; reads are paced per shard (5
calls/s, 2 MiB/s, slower when idle at the tip). With `aggregate=True`, small records are packed
per predicted shard into KPL-aggregated records; any KPL-aggregated record read is unpacked.

URI: `kinesis://NAME?region=..&endpoint=..` plus optional `timeout` (seconds per call),
`aggregate` (1/0), `limits=off` (lift every client-side limit, for emulators that never throttle),
or each limit alone: `shard_write_records`, `shard_write_bytes`, `shard_read_calls`,
`shard_read_bytes` (a number or `off`) and `idle_wait` (seconds).

PutRecords bodies are serialised here with orjson and handed to botocore by two event hooks
(`_take_body`, `_put_body`), so botocore still signs, sends and parses every call.

Every botocore and aiohttp exception is translated in `_translate`, the one place that does it.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.utils import parse_timestamp

from processor.errors import (
    ConfigError,
    ExpiredIterator,
    InvalidRequest,
    ShardflowError,
    StreamNotFound,
    StreamUnavailable,
    Throttled,
)
from processor.streams.base import (
    MAX_GET_RECORDS,
    MAX_HASH_KEY,
    MAX_PUT_BYTES,
    MAX_PUT_RECORDS,
    MAX_RECORD_BYTES,
    GetRecordsResult,
    IteratorType,
    PutRecord,
    PutResult,
    Record,
    ShardInfo,
    StreamDescription,
    hash_key,
)
from processor.streams.kpl import AggregateBuilder, pack, unpack
from processor.streams.ratelimit import ReadPacer, ShardLimits, WriteLimiter
from processor.uris import query_params

__all__ = ["AGGREGATED_PUT_RECORDS", "KinesisOptions", "KinesisStream"]

_REQUEST_FAULT_CODES = frozenset(
    {"InvalidArgumentException", "ValidationException", "SerializationException", "LimitExceededException"}
)
"""Codes that say the request itself is wrong: retrying it unchanged cannot succeed."""
_THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException"}
)
_ACCESS_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationTokenException",
        "IncompleteSignature",
    }
)
_RETRY_RECORD_CODES = frozenset({"ProvisionedThroughputExceededException", "InternalFailure"})
AGGREGATED_PUT_RECORDS = 1_000
"""User records one `put_records` call takes when aggregating.

Kinesis bounds a PutRecords request at 500 records of <= 1 MiB and 5 MiB in all; aggregated,
1,000 events of a few hundred bytes pack into a few hundred KiB, about one KPL record per shard:
one request carrying twice what 500 plain records do, in a handful of Kinesis records. Larger
events split into several requests inside one call. Not more: the calls in flight overlap, one
packing while another is on the wire, and fewer larger calls leave each step waiting on the one
before (50,000 events against kinesalite: 10,000 a call 108k events/s, 1,000 a call 134k-183k;
`benchmarks/stream.py`). A call is also the flusher's unit of retry and of memory in flight.
"""
_SHARD_MAP_TTL = 30.0
_ITERATOR_MEMORY = 50_000
_CREATE_WAIT = 300.0
_KEY_MEMORY = 65_536


class _Outgoing(NamedTuple):
    """A record on its way out: what PutRecords sends, its size as Kinesis counts it, and the
    shard it is predicted to land on (keys the write buckets and the aggregation). A NamedTuple:
    plain puts make one per record, and a frozen dataclass takes three times as long to build."""

    data: bytes
    partition_key: str
    explicit_hash_key: int | None
    size: int
    shard_id: str | None
    key: int


_BODY = "ShardflowBody"
"""A PutRecords parameter of ours: the request body, already serialised (`_put_records_body`)."""


def _put_records_body(stream: str, outgoing: Sequence[_Outgoing]) -> bytes:
    """The PutRecords JSON body, built with orjson.

    botocore's serializer walks each record in Python and encodes megabytes of base64 with the
    standard `json`: for aggregated records that cost more CPU than packing them.
    """
    return orjson.dumps(
        {
            "StreamName": stream,
            "Records": [
                {"Data": base64.b64encode(o.data).decode("ascii"), "PartitionKey": o.partition_key}
                if o.explicit_hash_key is None
                else {
                    "Data": base64.b64encode(o.data).decode("ascii"),
                    "PartitionKey": o.partition_key,
                    "ExplicitHashKey": str(o.explicit_hash_key),
                }
                for o in outgoing
            ],
        }
    )


def _take_body(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-parameter-build: move our pre-built body out of the parameters botocore serialises."""
    body = params.pop(_BODY, None)
    if body is not None:
        context[_BODY] = body


def _put_body(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-call: send the pre-built body instead of the serialised placeholder (botocore's own
    handlers rewrite `params['body']` here too); signing comes after, so it covers this body."""
    body = context.get(_BODY)
    if body is not None:
        params["body"] = body


def _epoch_seconds(value: object) -> float:
    """Timestamps of Kinesis answers as epoch seconds (numbers in JSON; ISO-8601 elsewhere)."""
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return float(parse_timestamp(str(value)).timestamp())


def _requests(
    packed: Sequence[tuple[_Outgoing, list[int]]],
) -> list[Sequence[tuple[_Outgoing, list[int]]]]:
    """`packed` cut, in order, into PutRecords requests of <= 500 records and <= 5 MiB."""
    requests: list[Sequence[tuple[_Outgoing, list[int]]]] = []
    start = 0
    while start < len(packed):
        end, size = start, 0
        while end < len(packed) and end - start < MAX_PUT_RECORDS:
            rec_size = packed[end][0].size
            if end > start and size + rec_size > MAX_PUT_BYTES:
                break
            size += rec_size
            end += 1
        requests.append(packed[start:end])
        start = end
    return requests


class _InUse(InvalidRequest):
    """ResourceInUseException: the stream exists, or is being updated."""


class _Unsupported(InvalidRequest):
    """The endpoint does not know the operation (an emulator without UpdateShardCount)."""


@dataclass(frozen=True, slots=True)
class KinesisOptions:
    """Everything a `KinesisStream` is configured with; built from the URI by `from_uri`."""

    name: str
    region: str | None = None
    """None: the standard AWS chain (AWS_REGION, AWS_DEFAULT_REGION, profile)."""
    endpoint: str | None = None
    """None: the AWS endpoint of the region."""
    max_connections: int = 16
    timeout: float = 10.0
    """Seconds for any one call, connect included."""
    aggregate: bool = False
    limits: ShardLimits = field(default_factory=ShardLimits)


def _limit(params: dict[str, str], key: str, default: float | None) -> float | None:
    raw = params.get(key)
    if raw is None:
        return default
    if raw.lower() in {"off", "none", "0"}:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"kinesis URI parameter {key}={raw!r} is not a number or 'off'") from None


def _parse_uri(uri: str, max_connections: int, aggregate: bool) -> KinesisOptions:
    parts = urlsplit(uri)
    if parts.scheme != "kinesis" or not parts.netloc:
        raise ConfigError(f"Kinesis URI must look like kinesis://STREAM?region=..&endpoint=..: {uri!r}")
    params = query_params(uri)
    known = {
        "region",
        "endpoint",
        "timeout",
        "aggregate",
        "limits",
        "shard_write_records",
        "shard_write_bytes",
        "shard_read_calls",
        "shard_read_bytes",
        "idle_wait",
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"unknown Kinesis URI parameter(s) {', '.join(unknown)} in {uri!r}")
    base = ShardLimits()
    if params.get("limits", "").lower() in {"off", "none"}:
        base = ShardLimits(None, None, None, None, base.idle_wait)
    limits = ShardLimits(
        write_records=_limit(params, "shard_write_records", base.write_records),
        write_bytes=_limit(params, "shard_write_bytes", base.write_bytes),
        read_calls=_limit(params, "shard_read_calls", base.read_calls),
        read_bytes=_limit(params, "shard_read_bytes", base.read_bytes),
        idle_wait=_limit(params, "idle_wait", base.idle_wait) or 0.0,
    )
    try:
        timeout = float(params.get("timeout", "10"))
    except ValueError:
        raise ConfigError(f"kinesis URI parameter timeout={params['timeout']!r} is not a number") from None
    agg = params.get("aggregate")
    return KinesisOptions(
        name=parts.netloc,
        region=params.get("region") or None,
        endpoint=params.get("endpoint") or None,
        max_connections=max_connections,
        timeout=timeout,
        aggregate=aggregate if agg is None else agg.lower() in {"1", "true", "yes", "on"},
        limits=limits,
    )


class KinesisStream:
    """A `Stream` on Kinesis Data Streams (or a Kinesis-compatible endpoint).

    Safe to share between the tasks of one event loop. The client is created on first use and
    released by `close()` (or `async with`).
    """

    def __init__(self, options: KinesisOptions) -> None:
        self.options = options
        self.name = options.name
        self.max_put_records = AGGREGATED_PUT_RECORDS if options.aggregate else MAX_PUT_RECORDS
        # PutRecords may fail one record and store a later one of its key; aggregation packs a
        # key's records together and holds its shard back after a failure.
        self.put_failures_keep_key_order = options.aggregate
        self.paces_puts = True
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._shards: tuple[ShardInfo, ...] = ()
        self._open: list[ShardInfo] = []
        self._open_starts: list[int] = []
        self._shards_at = -_SHARD_MAP_TTL
        self._shards_lock = asyncio.Lock()
        self._writes = WriteLimiter(options.limits)
        self._reads = ReadPacer(options.limits)
        self._iterator_shard: OrderedDict[str, str] = OrderedDict()
        self._key_shards: dict[str, tuple[int, int, str | None]] = {}
        """Partition key -> (hash key, its size in bytes, predicted shard), for this shard map."""
        self._closed = False

    @classmethod
    def from_uri(cls, uri: str, *, max_connections: int = 16, aggregate: bool = False) -> KinesisStream:
        """A stream for `kinesis://NAME?region=..&endpoint=..`; nothing is contacted yet."""
        return cls(_parse_uri(uri, max_connections, aggregate))

    @property
    def where(self) -> str:
        """The endpoint (or region) for error messages."""
        if self.options.endpoint:
            return self.options.endpoint
        if self._client is not None:
            return str(self._client.meta.endpoint_url)
        return f"region {self.options.region or '(from the AWS chain)'}"

    async def __aenter__(self) -> KinesisStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await self._exit.aclose()

    # --- the one place that talks to botocore -----------------------------------------------

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                if self._closed:
                    raise StreamUnavailable(f"Kinesis stream {self.name!r} is closed")
                o = self.options
                config = AioConfig(
                    max_pool_connections=o.max_connections,
                    connect_timeout=o.timeout,
                    read_timeout=o.timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    tcp_keepalive=True,
                    # put_records checks every documented limit itself; botocore's validator
                    # walks each record again and costs more CPU than the call's own encoding
                    parameter_validation=False,
                )
                session = get_session()
                # Kinesis sends timestamps as epoch seconds and shardflow wants exactly that;
                # botocore's default turns each into a tz-aware datetime via dateutil, which
                # costs more CPU than the rest of a GetRecords answer together.
                session.get_component("response_parser_factory").set_parser_defaults(
                    timestamp_parser=_epoch_seconds
                )
                try:
                    self._client = await self._exit.enter_async_context(
                        session.create_client(
                            "kinesis", region_name=o.region, endpoint_url=o.endpoint, config=config
                        )
                    )
                except Exception as exc:
                    raise self._translate(exc) from exc
                events = self._client.meta.events
                events.register("before-parameter-build.kinesis.PutRecords", _take_body)
                events.register("before-call.kinesis.PutRecords", _put_body)
            return self._client

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        client = await self._get_client()
        try:
            async with asyncio.timeout(self.options.timeout):
                result: dict[str, Any] = await getattr(client, operation)(**kwargs)
                return result
        except ShardflowError:
            raise
        except Exception as exc:
            raise self._translate(exc, operation) from exc

    def _translate(self, exc: BaseException, operation: str = "connect") -> ShardflowError:
        """Map a botocore/aiohttp exception to the error a shardflow caller acts on."""
        where = self.where
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or code
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "ResourceNotFoundException" and message.startswith("Shard "):
                return InvalidRequest(f"Kinesis stream {self.name!r}: {message}")
            if code == "ResourceNotFoundException":
                return StreamNotFound(f"Kinesis stream {self.name!r} not found at {where}: {message}")
            if code in _THROTTLE_CODES or code == "KMSThrottlingException":
                return Throttled(f"Kinesis {operation} throttled on stream {self.name!r}: {message}")
            if code.startswith("KMS"):
                # the stream's key is disabled, missing or not usable yet: the stream cannot take
                # records until someone fixes the key, but nothing in the request is at fault
                return StreamUnavailable(
                    f"Kinesis {operation} on stream {self.name!r}: its KMS key refused ({code}): {message}"
                )
            if code == "ExpiredIteratorException":
                return ExpiredIterator(f"shard iterator expired on stream {self.name!r}: {message}")
            if code == "ResourceInUseException":
                return _InUse(f"Kinesis stream {self.name!r} is in use: {message}")
            if code in {"UnknownOperationException", "InvalidAction"}:
                return _Unsupported(f"Kinesis endpoint {where} does not support {operation}")
            if code in _ACCESS_CODES:
                return ConfigError(
                    f"access to Kinesis stream {self.name!r} at {where} denied ({code}): {message}"
                )
            if status >= 500 or code in {"InternalFailure", "ServiceUnavailable", "InternalServerError"}:
                return StreamUnavailable(
                    f"Kinesis at {where} failed {operation} ({code or status}): {message}"
                )
            if code in _REQUEST_FAULT_CODES:
                return InvalidRequest(
                    f"Kinesis {operation} on stream {self.name!r} refused ({code}): {message}"
                )
            # An error code we do not know is no proof the records are at fault; dropping them
            # would lose accepted events, so the caller retries and the events wait in the spool.
            return StreamUnavailable(
                f"Kinesis {operation} on stream {self.name!r} failed ({code or status}): {message}"
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ConfigError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "or run where an instance/task role is available"
            )
        if isinstance(exc, NoRegionError):
            return ConfigError(
                f"no AWS region for Kinesis stream {self.name!r}: add ?region=.. to the stream URI "
                "or set AWS_DEFAULT_REGION"
            )
        if isinstance(
            exc, BotoConnectionError | HTTPClientError | aiohttp.ClientError | OSError | TimeoutError
        ):
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            return StreamUnavailable(f"Kinesis endpoint {where} unreachable during {operation}: {reason}")
        if isinstance(exc, BotoCoreError | ValueError):
            return ConfigError(f"Kinesis client for {where} misconfigured: {exc}")
        return StreamUnavailable(f"Kinesis {operation} at {where} failed: {type(exc).__name__}: {exc}")

    # --- control plane ----------------------------------------------------------------------

    async def create(self, shard_count: int) -> None:
        try:
            await self._call("create_stream", StreamName=self.name, ShardCount=shard_count)
        except _InUse:
            pass
        await self._wait_active()

    async def _wait_active(self, timeout: float = _CREATE_WAIT) -> None:
        deadline = time.monotonic() + timeout
        interval = 0.05
        while True:
            summary = await self._call("describe_stream_summary", StreamName=self.name)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                self._shards_at = -_SHARD_MAP_TTL
                return
            if time.monotonic() > deadline:
                raise StreamUnavailable(f"Kinesis stream {self.name!r} not ACTIVE after {timeout:.0f}s")
            await asyncio.sleep(interval)
            interval = min(1.0, interval * 2)

    async def _list_shards(self) -> tuple[ShardInfo, ...]:
        shards: list[ShardInfo] = []
        kwargs: dict[str, Any] = {"StreamName": self.name}
        while True:
            page = await self._call("list_shards", **kwargs)
            for s in page.get("Shards", []):
                parents = tuple(
                    p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p is not None
                )
                seq = s["SequenceNumberRange"]
                shards.append(
                    ShardInfo(
                        shard_id=s["ShardId"],
                        starting_hash_key=int(s["HashKeyRange"]["StartingHashKey"]),
                        ending_hash_key=int(s["HashKeyRange"]["EndingHashKey"]),
                        parent_shard_ids=parents,
                        starting_sequence=seq["StartingSequenceNumber"],
                        ending_sequence=seq.get("EndingSequenceNumber"),
                    )
                )
            token = page.get("NextToken")
            if not token:
                break
            kwargs = {"NextToken": token}
        self._shards = tuple(shards)
        self._open = sorted((s for s in shards if s.is_open), key=lambda s: s.starting_hash_key)
        self._open_starts = [s.starting_hash_key for s in self._open]
        self._key_shards.clear()
        self._shards_at = time.monotonic()
        return self._shards

    async def describe(self) -> StreamDescription:
        summary = (await self._call("describe_stream_summary", StreamName=self.name))[
            "StreamDescriptionSummary"
        ]
        shards = await self._list_shards()
        return StreamDescription(
            name=self.name,
            status=summary["StreamStatus"],
            shards=shards,
            retention_hours=int(summary.get("RetentionPeriodHours", 24)),
        )

    async def _shard_map(self, *, refresh: bool = False) -> tuple[ShardInfo, ...]:
        """The cached shard list used to predict where records land (refreshed every 30 s)."""
        if not refresh and self._shards and time.monotonic() - self._shards_at < _SHARD_MAP_TTL:
            return self._shards
        async with self._shards_lock:
            if refresh or not self._shards or time.monotonic() - self._shards_at >= _SHARD_MAP_TTL:
                await self._list_shards()
            return self._shards

    async def split_shard(self, shard_id: str, new_starting_hash_key: int | None = None) -> None:
        if new_starting_hash_key is None:
            shard = next((s for s in await self._shard_map(refresh=True) if s.shard_id == shard_id), None)
            if shard is None:
                raise InvalidRequest(f"no shard {shard_id!r} in Kinesis stream {self.name!r}")
            new_starting_hash_key = (shard.starting_hash_key + shard.ending_hash_key + 1) // 2
        await self._call(
            "split_shard",
            StreamName=self.name,
            ShardToSplit=shard_id,
            NewStartingHashKey=str(new_starting_hash_key),
        )
        await self._wait_active()

    async def merge_shards(self, shard_id: str, adjacent_shard_id: str) -> None:
        await self._call(
            "merge_shards",
            StreamName=self.name,
            ShardToMerge=shard_id,
            AdjacentShardToMerge=adjacent_shard_id,
        )
        await self._wait_active()

    async def update_shard_count(self, target: int) -> None:
        """UpdateShardCount (UNIFORM_SCALING); on an endpoint without it, the same result by steps."""
        if target < 1:
            raise InvalidRequest(f"target shard count must be at least 1, got {target}")
        try:
            await self._call(
                "update_shard_count",
                StreamName=self.name,
                TargetShardCount=target,
                ScalingType="UNIFORM_SCALING",
            )
        except _Unsupported:
            await self._reshard_by_steps(target)
            return
        await self._wait_active()

    async def _reshard_by_steps(self, target: int) -> None:
        """Reach `target` uniform shards with SplitShard and MergeShards only.

        First split wherever a uniform boundary falls inside a shard, then merge the shards of
        each uniform range into one; every step waits until the stream is ACTIVE again.
        """
        step = (MAX_HASH_KEY + 1) // target
        bounds = [(i * step, MAX_HASH_KEY if i == target - 1 else (i + 1) * step - 1) for i in range(target)]
        for low, _ in bounds[1:]:
            shards = (await self.describe()).open_shards
            inside = next((s for s in shards if s.starting_hash_key < low <= s.ending_hash_key), None)
            if inside is not None:
                await self.split_shard(inside.shard_id, low)
        for low, high in bounds:
            while True:
                shards = (await self.describe()).open_shards
                group = sorted(
                    (s for s in shards if low <= s.starting_hash_key and s.ending_hash_key <= high),
                    key=lambda s: s.starting_hash_key,
                )
                if len(group) < 2:
                    break
                await self.merge_shards(group[0].shard_id, group[1].shard_id)

    # --- writes -----------------------------------------------------------------------------

    async def put_records(self, records: Sequence[PutRecord]) -> list[PutResult]:
        if not records:
            return []
        if len(records) > self.max_put_records:
            raise InvalidRequest(
                f"put_records takes at most {self.max_put_records} records here, got {len(records)}"
            )
        await self._shard_map()
        if self.options.aggregate:
            return await self._put_aggregated(records)
        outgoing = [self._outgoing(r) for r in records]
        total = sum(o.size for o in outgoing)
        if len(outgoing) > MAX_PUT_RECORDS or total > MAX_PUT_BYTES:
            raise InvalidRequest(
                f"PutRecords takes at most {MAX_PUT_RECORDS} records and 5 MiB; got {len(records)} "
                f"records of {total} bytes"
            )
        return await self._put_call(outgoing)

    def _outgoing(self, r: PutRecord) -> _Outgoing:
        """`r` checked against the per-record Kinesis limits, sized, and placed on the shard map."""
        size, key, shard_id = self._place(r)
        return _Outgoing(r.data, r.partition_key, r.explicit_hash_key, size, shard_id, key)

    def _place(self, r: PutRecord) -> tuple[int, int, str | None]:
        """`r` checked against the per-record Kinesis limits: its size as Kinesis counts it, its
        hash key and the shard it is predicted to land on."""
        key_len = len(r.partition_key)
        if not 1 <= key_len <= 256:
            raise InvalidRequest(f"partition key must be 1 to 256 characters, got {key_len}")
        size = len(r.data) + (key_len if r.partition_key.isascii() else len(r.partition_key.encode()))
        if size > MAX_RECORD_BYTES:
            raise InvalidRequest(f"record of {size} bytes is over the 1 MiB Kinesis limit")
        explicit = r.explicit_hash_key
        if explicit is not None and not 0 <= explicit <= MAX_HASH_KEY:
            raise InvalidRequest(f"explicit hash key {explicit} is outside 0..2^128-1")
        key = explicit if explicit is not None else hash_key(r.partition_key)
        return size, key, self._predict(key)

    def _predict(self, key: int) -> str | None:
        """The open shard of the cached map whose range holds `key` (None if the map has a gap)."""
        i = bisect.bisect_right(self._open_starts, key) - 1
        if i < 0 or key > self._open[i].ending_hash_key:
            return None
        return self._open[i].shard_id

    async def _put_call(self, outgoing: Sequence[_Outgoing]) -> list[PutResult]:
        """One PutRecords call, paced per predicted shard; per-record results in order."""
        per_shard: dict[str, list[int]] = {}
        for o in outgoing:
            if o.shard_id is not None:
                counts = per_shard.get(o.shard_id)
                if counts is None:
                    counts = per_shard[o.shard_id] = [0, 0]
                counts[0] += 1
                counts[1] += o.size
        if len(per_shard) == 1:
            ((sid, (n, size)),) = per_shard.items()
            await self._writes.acquire(sid, n, size)
        elif per_shard:
            await asyncio.gather(*(self._writes.acquire(s, n, b) for s, (n, b) in per_shard.items()))
        body = _put_records_body(self.name, outgoing)
        try:
            answer = await self._call("put_records", StreamName=self.name, Records=[], **{_BODY: body})
        except Throttled:
            for sid in per_shard:
                self._writes.throttled(sid)
            raise
        results: list[PutResult] = []
        stale = False
        throttled: set[str] = set()
        for entry, o in zip(answer["Records"], outgoing, strict=True):
            code = entry.get("ErrorCode")
            if code is not None:
                if code == "ProvisionedThroughputExceededException" and o.shard_id is not None:
                    throttled.add(o.shard_id)
                results.append(PutResult(error_code=code, error_message=entry.get("ErrorMessage")))
                continue
            shard_id = entry["ShardId"]
            if shard_id != o.shard_id:
                stale = True
            results.append(PutResult(shard_id=shard_id, sequence_number=entry["SequenceNumber"]))
        for sid in throttled:
            self._writes.throttled(sid)
        if stale:
            self._shards_at = -_SHARD_MAP_TTL
        return results

    async def _put_aggregated(self, records: Sequence[PutRecord]) -> list[PutResult]:
        """Pack records per predicted shard into KPL records of <= 1 MiB, send, map results back.

        Each aggregated record carries the hash key of its first sub-record as ExplicitHashKey,
        so it lands on the shard its sub-records were predicted for. Every record is checked
        before anything is sent; a partition key seen before skips its MD5 and shard look-up.
        """
        if any(r.explicit_hash_key is not None for r in records):
            return await self._send_packed(self._pack_with_builders(records), len(records))
        known = self._key_shards
        if len(known) > _KEY_MEMORY:
            known.clear()
        groups: dict[str | None, tuple[list[int], list[str], list[bytes]]] = {}
        for i, r in enumerate(records):
            partition_key = r.partition_key
            data = r.data
            hit = known.get(partition_key)
            if hit is None:
                size, key, sid = self._place(r)
                hit = known[partition_key] = (key, size - len(data), sid)
            elif len(data) + hit[1] > MAX_RECORD_BYTES:
                raise InvalidRequest(f"record of {len(data) + hit[1]} bytes is over the 1 MiB Kinesis limit")
            group = groups.get(hit[2])
            if group is None:
                group = groups[hit[2]] = ([], [], [])
            group[0].append(i)
            group[1].append(partition_key)
            group[2].append(data)
        packed: list[tuple[_Outgoing, list[int]]] = []
        for sid, (index, keys, datas) in groups.items():
            start = 0
            for blob, count in pack(keys, datas, MAX_RECORD_BYTES):
                if blob is None:
                    packed.append((self._outgoing(records[index[start]]), [index[start]]))
                else:
                    key, key_size, _ = known[keys[start]]
                    packed.append(
                        (
                            _Outgoing(blob, keys[start], key, len(blob) + key_size, sid, key),
                            index[start : start + count],
                        )
                    )
                start += count
        return await self._send_packed(packed, len(records))

    def _pack_with_builders(self, records: Sequence[PutRecord]) -> list[tuple[_Outgoing, list[int]]]:
        """`_put_aggregated`'s packing for calls where some records carry explicit hash keys."""
        known = self._key_shards
        if len(known) > _KEY_MEMORY:
            known.clear()
        open_packs: dict[str | None, tuple[AggregateBuilder, list[int], int]] = {}
        packed: list[tuple[_Outgoing, list[int]]] = []

        def seal(sid: str | None) -> None:
            builder, index, first_key = open_packs.pop(sid)
            assert builder.partition_key is not None
            data = builder.build()
            packed.append(
                (_Outgoing(data, builder.partition_key, first_key, builder.size, sid, first_key), index)
            )

        for i, r in enumerate(records):
            partition_key = r.partition_key
            data = r.data
            hit = known.get(partition_key) if r.explicit_hash_key is None else None
            if hit is not None:
                key, key_size, sid = hit
                if len(data) + key_size > MAX_RECORD_BYTES:
                    raise InvalidRequest(
                        f"record of {len(data) + key_size} bytes is over the 1 MiB Kinesis limit"
                    )
                ehk = None
            else:
                o = self._outgoing(r)
                key, sid = o.key, o.shard_id
                ehk = None if o.explicit_hash_key is None else str(o.explicit_hash_key)
                if ehk is None:
                    known[partition_key] = (key, o.size - len(data), sid)
            open_pack = open_packs.get(sid)
            if open_pack is not None and not open_pack[0].try_add_parts(
                partition_key, data, ehk, MAX_RECORD_BYTES
            ):
                seal(sid)
                open_pack = None
            if open_pack is None:
                builder = AggregateBuilder()
                if not builder.try_add_parts(partition_key, data, ehk, MAX_RECORD_BYTES):
                    packed.append((self._outgoing(r), [i]))
                    continue
                open_pack = open_packs[sid] = (builder, [], key)
            open_pack[1].append(i)
        for sid in list(open_packs):
            seal(sid)
        return packed

    async def _send_packed(
        self, packed: Sequence[tuple[_Outgoing, list[int]]], count: int
    ) -> list[PutResult]:
        """Send aggregated records in as few PutRecords calls as the limits allow, one at a time.

        Per-key order holds across calls: once an aggregated record of a shard fails, later ones
        of that shard are not sent but fail alike, and after a whole call fails nothing more is
        sent. A whole-call failure raises only while nothing is acknowledged; afterwards it
        becomes a retryable per-record failure, so the caller resends only what did not land.
        """
        results: list[PutResult | None] = [None] * count
        held: dict[str | None, PutResult] = {}
        acknowledged = False
        stopped: PutResult | None = None
        for request in _requests(packed):
            to_send: list[tuple[_Outgoing, list[int]]] = []
            for record, index in request:
                failure = stopped or held.get(record.shard_id)
                if failure is None:
                    to_send.append((record, index))
                    continue
                for i in index:
                    results[i] = failure
            if not to_send:
                continue
            try:
                answers = await self._put_call([p[0] for p in to_send])
            except ShardflowError as exc:
                if not acknowledged:
                    raise
                code = (
                    "ProvisionedThroughputExceededException"
                    if isinstance(exc, Throttled)
                    else "InternalFailure"
                )
                stopped = PutResult(error_code=code, error_message=str(exc))
                answers = [stopped] * len(to_send)
            for (record, index), answer in zip(to_send, answers, strict=True):
                if answer.ok:
                    acknowledged = True
                else:
                    held.setdefault(record.shard_id, answer)
                for i in index:
                    results[i] = answer
        done = [r for r in results if r is not None]
        assert len(done) == count, "every user record has an answer"
        return done

    # --- reads ------------------------------------------------------------------------------

    def _remember(self, iterator: str, shard_id: str) -> None:
        self._iterator_shard[iterator] = shard_id
        if len(self._iterator_shard) > _ITERATOR_MEMORY:
            self._iterator_shard.popitem(last=False)

    async def get_shard_iterator(
        self,
        shard_id: str,
        iterator_type: IteratorType,
        *,
        sequence_number: str | None = None,
        timestamp: float | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {
            "StreamName": self.name,
            "ShardId": shard_id,
            "ShardIteratorType": str(iterator_type),
        }
        if iterator_type in (IteratorType.AT_SEQUENCE_NUMBER, IteratorType.AFTER_SEQUENCE_NUMBER):
            if sequence_number is None:
                raise InvalidRequest(f"{iterator_type} needs a sequence number")
            kwargs["StartingSequenceNumber"] = sequence_number
        elif iterator_type == IteratorType.AT_TIMESTAMP:
            if timestamp is None:
                raise InvalidRequest("AT_TIMESTAMP needs a timestamp")
            kwargs["Timestamp"] = dt.datetime.fromtimestamp(timestamp, dt.UTC)
        answer = await self._call("get_shard_iterator", **kwargs)
        iterator = str(answer["ShardIterator"])
        self._remember(iterator, shard_id)
        return iterator

    async def get_records(self, iterator: str, limit: int = MAX_GET_RECORDS) -> GetRecordsResult:
        if not 1 <= limit <= MAX_GET_RECORDS:
            raise InvalidRequest(f"GetRecords limit must be 1..{MAX_GET_RECORDS}, got {limit}")
        shard_id = self._iterator_shard.pop(iterator, None)
        if shard_id is not None:
            await self._reads.wait(shard_id)
        try:
            answer = await self._call("get_records", ShardIterator=iterator, Limit=limit)
        except ShardflowError as exc:
            if shard_id is not None:
                # the caller may retry this same iterator: keep pacing it
                self._remember(iterator, shard_id)
                if isinstance(exc, Throttled):
                    self._reads.throttled(shard_id)
                else:
                    self._reads.done(shard_id, 0, idle=False)
            raise
        records: list[Record] = []
        size = 0
        for r in answer.get("Records", []):
            data: bytes = r["Data"]
            size += len(data)
            arrived = float(r.get("ApproximateArrivalTimestamp") or 0.0)
            subs = unpack(data)
            if subs is None:
                records.append(Record(r["SequenceNumber"], r["PartitionKey"], data, arrived))
            else:
                sequence = r["SequenceNumber"]
                records.extend(Record(sequence, key, sub, arrived, i) for i, (key, sub, _) in enumerate(subs))
        behind = int(answer.get("MillisBehindLatest", 0))
        next_iterator = answer.get("NextShardIterator")
        children: tuple[str, ...] = ()
        if shard_id is not None:
            self._reads.done(shard_id, size, idle=not records and behind == 0)
        if next_iterator:
            if shard_id is not None:
                self._remember(next_iterator, shard_id)
        else:
            next_iterator = None
            children = tuple(c["ShardId"] for c in answer.get("ChildShards", []))
            if shard_id is not None:
                self._reads.forget(shard_id)
                if not children:
                    shards = await self._shard_map(refresh=True)
                    children = tuple(s.shard_id for s in shards if shard_id in s.parent_shard_ids)
        return GetRecordsResult(
            records=tuple(records),
            next_iterator=next_iterator,
            millis_behind_latest=behind,
            child_shard_ids=children,
        )
