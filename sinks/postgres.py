"""PostgreSQL warehouse through asyncpg: binary COPY straight into page_views, then one fenced commit.

A batch is one transaction on a connection of the write pool: check that the shard's lease is
still ours (no lock: a stale writer stops before it writes anything), binary `COPY` the rows
straight into `page_views`, lock the lease row only if it is still ours (`SELECT ... AND owner
AND lease_counter FOR UPDATE`: the fence), insert the dead letters (`ON CONFLICT (dedup_key) DO
NOTHING`), upsert the checkpoint, commit. A connection cut anywhere before COMMIT leaves nothing.

An event_id already there (a client retrying an event, a duplicate inside the batch, a writer of
the same id committing first) fails that COPY with a unique violation. The transaction is then
rolled back whole (nothing in it is worth keeping) and the batch takes the merge path instead:
`COPY` into a temporary staging table, the fence, `INSERT ... SELECT ... ON CONFLICT (event_id)
DO NOTHING`, dead letters, checkpoint. A shard that met a duplicate keeps merging until a merge
finds every row new, so a replay pays for one failed COPY, not one per batch. The direct path
costs PostgreSQL what a plain COPY does per row; the merge path about 1.4 times as much.

The lease row is locked last, for the short fenced window only: a consumer stopped (SIGSTOP, a
long GC pause) or cut off while it copies holds no lock a takeover needs, so a takeover after
expiry never waits on it. What is left is bounded twice: the write connections carry
`idle_in_transaction_session_timeout`, so the server ends a session stopped inside the locked
window, and the lease connections carry `lock_timeout`, so a take that meets that lock gives up
(a lost race, retried on the next cycle) instead of hanging.

A writer stopped in the middle of a COPY holds the event_ids it sent, uncommitted, and
PostgreSQL applies neither timeout while it waits for COPY data; the new owner's write of those
ids would wait on them. So the stale writer is fenced by termination: every write transaction
begins with `SET LOCAL application_name = 'shardflow-w <tag> <counter>'` (tag: a hash of
stream/shard; the lease counter zero-padded so that text order is number order), and before a
batch with rows touches page_views, the same statement that checks ownership ends, with
`pg_terminate_backend`, every other session of this database marked with the same tag and a
lower counter: a stale owner, whose commit the fence would refuse anyway. A newer owner's or
another shard's session never matches. The mark is set before the check reads the lease, so
either the stale writer's check sees the takeover, or the new owner's scan sees the stale mark.
A session this role may not signal (another role, a superuser's) is left alone and logged once;
the wait is then as before. A host that vanished is bounded by server-side TCP keepalives on
the write connections (idle 10 s, then 3 probes 5 s apart). Any of these settings given in the
DSN's query string wins over these defaults.

Lease operations use a pool of their own, so a stuck COPY never delays a renewal, and the
database server's clock (`clock_timestamp()`), so consumers with skewed clocks agree on expiry.
Connections are made lazily and each new one resolves the host name again (a DNS name that
moves to a new primary is followed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from processor.errors import (
    ConfigError,
    InvalidRequest,
    RowsRejected,
    ShardflowError,
    WarehouseUnavailable,
)
from processor.streams.base import ShardInfo
from processor.uris import mask_uri
from sinks._pooled import PooledWarehouse, WriteAgain
from sinks._shared import (
    DEAD_LETTER_COLUMNS,
    LEASE_COLUMNS,
    LOAD_COLUMNS,
    LockBusy,
    dead_letter_params,
    lease_from_row,
    lease_lost,
    parents_json,
    shared_sql,
)
from sinks.base import (
    PAGE_VIEW_COLUMNS,
    Batch,
    Checkpoint,
    Lease,
    PageView,
    QueryResult,
    StoredDeadLetter,
)
from sinks.schema import VERSION_TABLE, pending_steps

__all__ = ["PostgresWarehouse"]

log = logging.getLogger(__name__)

_SCHEMA_LOCK = 0x5F_5348_4446  # pg_advisory_xact_lock key shared by every shardflow process
_STAGE = "shardflow_stage"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE page_views INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MERGE = (
    f"INSERT INTO page_views ({LOAD_COLUMNS}) SELECT {LOAD_COLUMNS} FROM {_STAGE} "
    "ON CONFLICT (event_id) DO NOTHING"
)
_FENCE = (
    "SELECT 1 FROM shardflow_leases WHERE stream = $1 AND shard_id = $2 AND owner = $3 "
    "AND lease_counter = $4 FOR UPDATE"
)
"""Locks the lease row only while it is still the writer's: a stale writer never takes the lock."""
_OWNED = (
    "SELECT 1 FROM shardflow_leases WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND lease_counter = $4"
)
"""The fence without the lock: a stale writer learns it before its COPY touches page_views."""
_OWNED_ENDING_STALE = (
    f"SELECT ({_OWNED}), count(*) FILTER (WHERE outcome = 'refused') FROM ("
    "SELECT CASE WHEN NOT (pg_has_role(usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE')) "
    "OR ((SELECT rolsuper FROM pg_roles WHERE oid = usesysid) AND NOT current_setting('is_superuser')::bool) "
    "THEN 'refused' ELSE pg_terminate_backend(pid)::text END AS outcome "
    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    'AND application_name COLLATE "C" > $5 AND application_name COLLATE "C" < $6) stale'
)
"""`_OWNED`, and end the sessions of stale owners of the shard ($5 the shard's mark prefix, $6
this writer's mark); counts those this role may not signal (PostgreSQL's own rule, so that the
statement never fails on them)."""
_WRITER = "shardflow-w"
_INSERT_DEAD = (
    f"INSERT INTO shardflow_dead_letters ({DEAD_LETTER_COLUMNS}) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) "
    "ON CONFLICT (dedup_key) DO NOTHING RETURNING stage"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO shardflow_checkpoints (stream, shard_id, sequence_number, lease_counter, updated_at) "
    "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (stream, shard_id) DO UPDATE SET "
    "sequence_number = excluded.sequence_number, lease_counter = excluded.lease_counter, "
    "updated_at = excluded.updated_at"
)
_NOW = "extract(epoch from clock_timestamp())::float8"
_WITH_CHECKPOINT = (
    f"SELECT {LEASE_COLUMNS} FROM changed l LEFT JOIN shardflow_checkpoints c "
    "ON c.stream = l.stream AND c.shard_id = l.shard_id ORDER BY l.shard_id"
)
_SQL = shared_sql("$")
_ROW_CLASSES = frozenset(("22", "23"))
"""Data exception, integrity constraint violation: a value of the batch, not the warehouse."""
_RETRIABLE_CLASSES = frozenset(("08", "40", "53", "55", "57", "58"))
"""Connection exception, transaction rollback (deadlock, serialization), insufficient resources,
object in use / lock not available, operator intervention (shutdown), system error."""


def _millis(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd")


def _clean_row(row: PageView) -> PageView:
    return PageView._make(_clean(v) if isinstance(v, str) else v for v in row)


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PG_INFINITY = 0x7FFF_FFFF_FFFF_FFFF
_PG_NEGATIVE_INFINITY = -0x8000_0000_0000_0000
_INFINITY = datetime.max
_NEGATIVE_INFINITY = datetime.min
_INFINITY_MICROS = 252455615999999999
_NEGATIVE_INFINITY_MICROS = -63082281600000000
"""asyncpg's sentinels: the naive datetime.max/min are PostgreSQL's infinities, and so are the
microsecond counts they encode to."""


_ENCODED: dict[datetime, tuple[int]] = {}
_ENCODED_MAX = 4096


def _encode_timestamptz(value: object) -> tuple[int]:
    """A timestamptz as microseconds since 2000-01-01 UTC, exactly as asyncpg's own encoder.

    asyncpg's binary encoder compares every value with its naive infinity sentinels first; for
    an aware datetime each comparison takes PEP 495's slow path, ~1 us per value, a third of a
    page_views row's COPY encoding. A row's UTC datetimes skip that here, and since rows share
    their timestamps (the enrichment's per-string cache returns the same objects), the encoded
    ones are kept in a small table.
    """
    if type(value) is datetime and value.tzinfo is UTC:
        encoded = _ENCODED.get(value)
        if encoded is None:
            if len(_ENCODED) >= _ENCODED_MAX:
                _ENCODED.clear()
            encoded = _ENCODED[value] = _from_micros((value - _PG_EPOCH) // _MICROSECOND)
        return encoded
    if isinstance(value, datetime):
        if value == _INFINITY:
            return (_PG_INFINITY,)
        if value == _NEGATIVE_INFINITY:
            return (_PG_NEGATIVE_INFINITY,)
        return _from_micros((value.astimezone(UTC) - _PG_EPOCH) // _MICROSECOND)
    if isinstance(value, date):
        local = timezone(datetime.now(UTC).astimezone().utcoffset() or timedelta())
        return _from_micros(
            (datetime(value.year, value.month, value.day, tzinfo=local) - _PG_EPOCH) // _MICROSECOND
        )
    name = type(value).__name__
    raise TypeError(f"expected a datetime.date or datetime.datetime instance, got {name!r}")


def _from_micros(micros: int) -> tuple[int]:
    if micros == _INFINITY_MICROS:
        return (_PG_INFINITY,)
    if micros == _NEGATIVE_INFINITY_MICROS:
        return (_PG_NEGATIVE_INFINITY,)
    return (micros,)


def _decode_timestamptz(value: tuple[int]) -> datetime:
    """What asyncpg's own decoder returns: an aware UTC datetime, or a naive infinity sentinel."""
    (micros,) = value
    if micros == _PG_INFINITY:
        return _INFINITY
    if micros == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return _PG_EPOCH + timedelta(microseconds=micros)


async def _init_writer(conn: Any) -> None:
    """Each write connection encodes timestamptz through `_encode_timestamptz` (same bytes, less CPU)."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=_decode_timestamptz,
        format="tuple",
    )


def _plain(rows: Sequence[PageView]) -> Iterator[tuple[Any, ...]]:
    """The rows as plain tuples for COPY: asyncpg's encoder takes each field of a tuple subclass
    (a NamedTuple) by the generic item protocol, which doubled its CPU per row (9.0 -> 5.1 us)."""
    return map(tuple, rows)


def _mark_prefix(stream: str, shard_id: str) -> str:
    """What every writer session of a shard's application_name starts with (fits in 63 bytes)."""
    tag = hashlib.blake2b(f"{stream}\x00{shard_id}".encode(), digest_size=8).hexdigest()
    return f"{_WRITER} {tag} "


def _mark(stream: str, shard_id: str, lease_counter: int) -> str:
    """A writer session's application_name: its shard and lease; text order is counter order."""
    return f"{_mark_prefix(stream, shard_id)}{lease_counter:019d}"


@asynccontextmanager
async def _marked_transaction(conn: Any, mark: str) -> AsyncIterator[None]:
    """A transaction whose session shows `mark` as its application_name from its first statement
    (one round trip with BEGIN) until it ends; `mark` is made of hex digits, digits and spaces."""
    try:
        await conn.execute(f"BEGIN; SET LOCAL application_name = '{mark}'")
        yield
    except BaseException:
        try:
            gone = conn.is_closed()
        except asyncpg.InterfaceError:  # the pool took back a connection the server ended
            gone = True
        if not gone:
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


class _Duplicate(ShardflowError):
    """A direct COPY met an event_id already in page_views: the batch takes the merge path."""


def _cleaned(batch: Batch) -> Batch:
    letters = [replace(d, reason=_clean(d.reason), payload=_clean(d.payload)) for d in batch.dead_letters]
    return replace(batch, rows=[_clean_row(r) for r in batch.rows], dead_letters=letters)


class PostgresWarehouse(PooledWarehouse):
    """`sinks.base.Warehouse` on PostgreSQL; see the module docstring for the guarantees."""

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self._merging: set[tuple[str, str]] = set()
        """Shards whose batches take the merge path until a merge finds every row new."""
        self._ends_stale = True
        """False once the server refused to end a stale writer's session outright."""
        self._refusal_logged = False
        self._to_reset: set[int] = set()
        """Server pids of write connections lent for something other than a batch (see `_reset`)."""

    @classmethod
    def from_uri(cls, uri: str) -> PostgresWarehouse:
        if uri.startswith("postgres://"):
            uri = "postgresql://" + uri[len("postgres://") :]
        if not uri.startswith("postgresql://"):
            raise ConfigError(f"not a PostgreSQL URI: {mask_uri(uri)}")
        return cls(uri)

    @property
    def dsn(self) -> str:
        return self.uri

    # -- connections and errors ------------------------------------------------------------

    def _translate(self, exc: Exception, where: str) -> ShardflowError | None:
        """The one place asyncpg and socket errors become shardflow errors."""
        if isinstance(exc, asyncpg.PostgresError):
            code = exc.sqlstate or ""
            message = f"{where}: {exc}"
            if code == "55P03":
                return LockBusy(message)
            if code[:2] in _RETRIABLE_CLASSES or isinstance(exc, asyncpg.PostgresConnectionError):
                return WarehouseUnavailable(message)
            if code[:2] == "28" or code == "3D000":
                return ConfigError(message)
            if code[:2] in _ROW_CLASSES:
                return RowsRejected(message)
            return InvalidRequest(message)
        if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
            return WarehouseUnavailable(f"{where}: {exc!r}")
        return None

    async def _make_pool(self, leases: bool) -> asyncpg.Pool:
        if leases:
            settings = {"lock_timeout": _millis(self.lock_timeout)}
        else:
            settings = {
                "idle_in_transaction_session_timeout": _millis(self.idle_timeout),
                "tcp_keepalives_idle": "10",
                "tcp_keepalives_interval": "5",
                "tcp_keepalives_count": "3",
            }
        given = parse_qs(urlsplit(self.dsn).query)
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=2 if leases else self.pool_size,
            timeout=self.connect_timeout,
            command_timeout=self.lease_timeout if leases else self.command_timeout,
            max_inactive_connection_lifetime=60.0,
            server_settings={k: v for k, v in settings.items() if k not in given},
            init=None if leases else _init_writer,
            reset=None if leases else self._reset,
        )
        return pool

    @asynccontextmanager
    async def _conn(self, what: str, *, leases: bool = False) -> AsyncIterator[Any]:
        async with self._errors(what):
            pool = await self._pool(leases)
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                if not leases and what != "write_batch":
                    self._to_reset.add(conn.get_server_pid())
                yield conn

    async def _reset(self, conn: Any) -> None:
        """A write connection going back to its pool (any open transaction is already rolled back).

        A batch leaves no session state (its settings are SET LOCAL, and the staging table is
        meant to stay), so after one the session is not reset: asyncpg's reset query costs a round
        trip and four statements per batch. After anything else (a query, which runs the
        caller's SQL) it is.
        """
        pid = conn.get_server_pid()
        if pid in self._to_reset:
            self._to_reset.discard(pid)
            query = conn.get_reset_query()
            if query:
                await conn.execute(query)

    async def _migrate(self, writes: asyncpg.Pool) -> None:
        async with writes.acquire(timeout=self.connect_timeout) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(VERSION_TABLE["postgresql"])
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM shardflow_schema_version")
            for version, statements in pending_steps("postgresql", int(current)):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO shardflow_schema_version (version) VALUES ($1)", version)

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        await pool.close()

    def _terminate_pool(self, pool: asyncpg.Pool) -> None:
        pool.terminate()

    # -- Sink --------------------------------------------------------------------------------

    async def _write(self, batch: Batch) -> tuple[int, dict[str, int]]:
        shard = (batch.stream, batch.shard_id)
        if shard not in self._merging:
            try:
                return await self._commit(batch, merge=False)
            except _Duplicate:
                self._merging.add(shard)
        new, filed = await self._commit(batch, merge=True)
        if batch.rows and new == len(batch.rows):
            self._merging.discard(shard)
        return new, filed

    async def _commit(self, batch: Batch, *, merge: bool) -> tuple[int, dict[str, int]]:
        """One fenced transaction, rows COPYed straight in or merged from staging; `_Duplicate`
        when a straight COPY meets an event_id already there (nothing is left of it)."""
        new = 0
        filed: dict[str, int] = {}
        mark = _mark(batch.stream, batch.shard_id, batch.fence.lease_counter)
        async with (
            self._conn("write_batch") as conn,
            asyncio.timeout(self.command_timeout),
            _marked_transaction(conn, mark),
        ):
            fence = (batch.stream, batch.shard_id, batch.fence.owner, batch.fence.lease_counter)
            try:
                if batch.rows and not await self._owned_ending_stale(conn, fence, mark):
                    raise lease_lost(batch)
                if batch.rows and merge:
                    await conn.execute(_CREATE_STAGE)
                    await conn.copy_records_to_table(
                        _STAGE, records=_plain(batch.rows), columns=PAGE_VIEW_COLUMNS
                    )
                elif batch.rows:
                    try:
                        status = await conn.copy_records_to_table(
                            "page_views", records=_plain(batch.rows), columns=PAGE_VIEW_COLUMNS
                        )
                    except asyncpg.UniqueViolationError as exc:
                        raise _Duplicate(str(exc)) from exc
                    new = int(status.rsplit(" ", 1)[-1])
                if await conn.fetchval(_FENCE, *fence) is None:
                    raise lease_lost(batch)
                if batch.rows and merge:
                    status = await conn.execute(_MERGE)
                    new = int(status.rsplit(" ", 1)[-1])
                if batch.dead_letters:
                    columns = zip(*map(dead_letter_params, batch.dead_letters), strict=True)
                    for (stage,) in await conn.fetch(_INSERT_DEAD, *map(list, columns)):
                        filed[stage] = filed.get(stage, 0) + 1
            except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError) as exc:
                # PostgreSQL cannot store NUL in text or jsonb; one more try with it replaced, so
                # one odd event never blocks its shard (the normal path pays nothing for this)
                raise WriteAgain(str(exc), _cleaned(batch)) from exc
            if batch.checkpoint is not None:
                await conn.execute(
                    _UPSERT_CHECKPOINT,
                    batch.stream,
                    batch.shard_id,
                    batch.checkpoint,
                    batch.fence.lease_counter,
                )
        return new, filed

    async def _owned_ending_stale(self, conn: Any, fence: tuple[str, str, str, int], mark: str) -> bool:
        """Whether the lease is still the writer's; first ends the sessions of the shard's stale
        owners, so that none of them holds event_ids this batch must wait for."""
        if not self._ends_stale:
            return await conn.fetchval(_OWNED, *fence) is not None
        try:
            owned, refused = await conn.fetchrow(_OWNED_ENDING_STALE, *fence, _mark_prefix(*fence[:2]), mark)
        except asyncpg.InsufficientPrivilegeError as exc:
            self._ends_stale = False
            log.warning(
                "%s refuses to end stale writer sessions; a new owner may wait for them: %s",
                self._shown(),
                exc,
            )
            raise WarehouseUnavailable(f"write_batch on {self._shown()}: {exc}") from exc
        if refused and not self._refusal_logged:
            self._refusal_logged = True
            log.warning(
                "%s: this role may not end %d stale writer session(s) of %s/%s; the new owner waits for them",
                self._shown(),
                refused,
                fence[0],
                fence[1],
            )
        return owned is not None

    async def get_checkpoint(self, stream: str, shard_id: str) -> str | None:
        async with self._conn("get_checkpoint", leases=True) as conn:
            value = await conn.fetchval(_SQL.get_checkpoint, stream, shard_id)
        return None if value is None else str(value)

    async def checkpoints(self, stream: str) -> list[Checkpoint]:
        async with self._conn("checkpoints", leases=True) as conn:
            rows = await conn.fetch(_SQL.checkpoints, stream)
        return [Checkpoint(r[0], r[1], r[2], int(r[3]), r[4]) for r in rows]

    async def list_dead_letters(
        self, *, stage: str | None = None, reason_like: str | None = None, limit: int = 1000
    ) -> list[StoredDeadLetter]:
        async with self._conn("list_dead_letters") as conn:
            rows = await conn.fetch(
                "SELECT id, stage, reason, payload, shard_id, sequence_number, created_at "
                "FROM shardflow_dead_letters WHERE ($1::text IS NULL OR stage = $1) "
                "AND ($2::text IS NULL OR reason LIKE $2) ORDER BY id LIMIT $3",
                stage,
                reason_like,
                limit,
            )
        return [StoredDeadLetter(*r) for r in rows]

    async def delete_dead_letters(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        async with self._conn("delete_dead_letters") as conn:
            status = await conn.execute(
                "DELETE FROM shardflow_dead_letters WHERE id = ANY($1::bigint[])", list(ids)
            )
        return int(status.rsplit(" ", 1)[-1])

    async def query(self, sql: str, *, limit: int = 10_000) -> QueryResult:
        async with self._conn("query") as conn, conn.transaction(readonly=True):
            statement = await conn.prepare(sql)
            columns = tuple(a.name for a in statement.get_attributes())
            rows: list[tuple[object, ...]] = []
            if limit > 0:
                cursor = await statement.cursor()
                rows = [tuple(r) for r in await cursor.fetch(limit)]
            elif not columns:
                await statement.fetch()
        return QueryResult(columns, rows)

    async def _ping(self) -> None:
        async with self._conn("ping", leases=True) as conn:
            await conn.fetchval("SELECT 1")

    # -- LeaseStore ----------------------------------------------------------------------------

    async def create_leases(self, stream: str, shards: Sequence[ShardInfo]) -> None:
        async with self._conn("create_leases", leases=True) as conn:
            await conn.executemany(
                "INSERT INTO shardflow_leases (stream, shard_id, parent_shard_ids) VALUES ($1, $2, $3) "
                "ON CONFLICT (stream, shard_id) DO NOTHING",
                [(stream, s.shard_id, parents_json(s.parent_shard_ids)) for s in shards],
            )

    async def _changed(self, what: str, update: str, *args: object) -> list[Lease]:
        async with self._conn(what, leases=True) as conn:
            rows = await conn.fetch(f"WITH changed AS ({update} RETURNING l.*) {_WITH_CHECKPOINT}", *args)
        return [lease_from_row(*r) for r in rows]

    async def list_leases(self, stream: str) -> list[Lease]:
        async with self._conn("list_leases", leases=True) as conn:
            rows = await conn.fetch(_SQL.leases, stream)
        return [lease_from_row(*r) for r in rows]

    async def _take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None:
        leases = await self._changed(
            "take_lease",
            f"UPDATE shardflow_leases l SET owner = $3, lease_counter = lease_counter + 1, "
            f"expires_at = {_NOW} + $5, handoff_to = NULL "
            "WHERE l.stream = $1 AND l.shard_id = $2 AND l.lease_counter = $4",
            stream,
            shard_id,
            owner,
            expected_counter,
            ttl,
        )
        return leases[0] if leases else None

    async def renew_leases(
        self,
        stream: str,
        owner: str,
        held: Mapping[str, int],
        ttl: float,
        rates: Mapping[str, float] | None = None,
    ) -> dict[str, Lease]:
        if not held:
            return {}
        leases = await self._changed(
            "renew_leases",
            f"UPDATE shardflow_leases l SET expires_at = {_NOW} + $5, "
            "records_per_second = coalesce(h.rate, l.records_per_second) "
            "FROM unnest($3::text[], $4::bigint[], $6::float8[]) AS h(shard_id, counter, rate) "
            "WHERE l.stream = $1 AND l.owner = $2 AND l.shard_id = h.shard_id "
            "AND l.lease_counter = h.counter",
            stream,
            owner,
            list(held),
            list(held.values()),
            ttl,
            [(rates or {}).get(shard) for shard in held],
        )
        return {lease.shard_id: lease for lease in leases}

    async def _release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool:
        async with self._conn("release_lease", leases=True) as conn:
            status = await conn.execute(_SQL.release, stream, shard_id, owner, lease_counter)
        return bool(status == "UPDATE 1")

    async def _request_handoff(self, stream: str, shard_id: str, requester: str) -> None:
        async with self._conn("request_handoff", leases=True) as conn:
            await conn.execute(_SQL.handoff, requester, stream, shard_id, requester)

    async def now(self) -> float:
        async with self._conn("now", leases=True) as conn:
            return float(await conn.fetchval(f"SELECT {_NOW}"))
