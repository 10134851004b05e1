"""The embedded warehouse: one SQLite file in WAL mode, shared safely by several processes.

Every SQLite call runs in one dedicated thread (never on the event loop), lease calls ahead of
queued batch writes, so a renewal never waits for a backlog of writes to expire. Writes are
`BEGIN IMMEDIATE` transactions, so the fence check, the rows, the dead letters and the
checkpoint of a batch commit together or not at all, and two processes never interleave them.
`query` uses a second, read-only connection (`mode=ro`, `PRAGMA query_only`).

SQLite has no server clock; the lease clock is this machine's, which is all processes sharing
one file ever see.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.request import pathname2url

from processor.errors import ConfigError, InvalidRequest, LeaseLost, RowsRejected, WarehouseUnavailable
from processor.sqlite_wal import enable_wal, is_busy
from processor.streams.base import ShardInfo
from processor.uris import sqlite_path
from sinks._shared import (
    DEAD_LETTER_COLUMNS,
    LOAD_COLUMNS,
    AsyncWarehouse,
    by_stage,
    dead_letter_params,
    lease_from_row,
    parents_json,
    record_commit,
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

__all__ = ["SqliteWarehouse"]

T = TypeVar("T")

_INSERT_ROW = (
    f"INSERT INTO page_views ({LOAD_COLUMNS}) VALUES ({', '.join('?' for _ in PAGE_VIEW_COLUMNS)})"
    " ON CONFLICT (event_id) DO NOTHING"
)
_INSERT_DEAD = (
    f"INSERT INTO shardflow_dead_letters ({DEAD_LETTER_COLUMNS}, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO shardflow_checkpoints (stream, shard_id, sequence_number, lease_counter, updated_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream, shard_id) DO UPDATE SET "
    "sequence_number = excluded.sequence_number, lease_counter = excluded.lease_counter, "
    "updated_at = excluded.updated_at"
)
_SQL = shared_sql("?")
_PING_TIMEOUT = 2.0


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _now_iso() -> str:
    return _iso(datetime.now(UTC)) or ""


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


_TS, _RECEIVED, _IS_BOT = (PAGE_VIEW_COLUMNS.index(c) for c in ("ts", "received_at", "is_bot"))


def _row(view: PageView) -> tuple[object, ...]:
    values: list[object] = list(view)
    values[_TS] = _iso(view.ts)
    values[_RECEIVED] = _iso(view.received_at)
    values[_IS_BOT] = 1 if view.is_bot else 0
    return tuple(values)


class _SqliteThread:
    """The one thread that runs every call on the warehouse's connections, urgent calls first."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None]]
        self._queue = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name="sqlite-warehouse", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, urgent: bool = False) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((0 if urgent else 1, next(self._order), fn, future))
        return future

    def shutdown(self) -> None:
        """Stop once the calls queued so far have run."""
        self._queue.put((2, next(self._order), None, None))

    def _work(self) -> None:
        while True:
            _, _, fn, future = self._queue.get()
            if fn is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


class SqliteWarehouse(AsyncWarehouse):
    """`sinks.base.Warehouse` on one SQLite file; see the module docstring for the guarantees."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._thread: _SqliteThread | None = None
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_uri(cls, uri: str) -> SqliteWarehouse:
        return cls(sqlite_path(uri))

    def _shown(self) -> str:
        return str(self.path)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._conn is not None:
                return
            if self._thread is None:
                self._thread = _SqliteThread()
            await self._call(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the directory of {self.path}: {exc}") from exc
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            enable_wal(conn, self.busy_timeout)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._migrate(conn)
            reader = sqlite3.connect(
                f"file:{pathname2url(str(self.path.resolve()))}?mode=ro",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            reader.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()
            raise
        self._conn, self._reader = conn, reader

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(VERSION_TABLE["sqlite"])
            current = conn.execute(
                "SELECT coalesce(max(version), 0) FROM shardflow_schema_version"
            ).fetchone()
            for version, statements in pending_steps("sqlite", int(current[0])):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO shardflow_schema_version (version, applied_at) VALUES (?, ?)",
                    (version, _now_iso()),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None

        def shut() -> None:
            for c in (reader, conn):
                if c is not None:
                    c.close()

        try:
            await asyncio.wrap_future(thread.submit(shut))
        finally:
            thread.shutdown()

    async def _call(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        """Run `fn` in the SQLite thread (`urgent`: ahead of the calls queued); sqlite3 errors
        become shardflow errors here, only here."""
        if self._thread is None:
            await self.start()
        assert self._thread is not None
        try:
            return await asyncio.wrap_future(self._thread.submit(partial(fn, *args), urgent=urgent))
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise ConfigError(f"cannot open SQLite warehouse {self.path}: {exc}") from exc
            if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
                raise RowsRejected(f"SQLite warehouse {self.path}: {exc}") from exc
            raise WarehouseUnavailable(f"SQLite warehouse {self.path}: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise WarehouseUnavailable(f"SQLite warehouse {self.path} is closed")
        return self._conn

    def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # -- Sink --------------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> int:
        started = time.perf_counter()
        written: tuple[int, dict[str, int]] = await self._call(
            self._transaction, lambda conn: self._write(conn, batch)
        )
        new, letters = written
        record_commit(started, new, letters)
        return new

    @staticmethod
    def _write(conn: sqlite3.Connection, batch: Batch) -> tuple[int, dict[str, int]]:
        """(new rows, new dead letters by stage)."""
        lease = conn.execute(
            "SELECT owner, lease_counter FROM shardflow_leases WHERE stream = ? AND shard_id = ?",
            (batch.stream, batch.shard_id),
        ).fetchone()
        if lease is None or lease[0] != batch.fence.owner or lease[1] != batch.fence.lease_counter:
            raise LeaseLost(
                f"lease on {batch.stream}/{batch.shard_id} is no longer "
                f"{batch.fence.owner}#{batch.fence.lease_counter}"
            )
        before = conn.total_changes
        conn.executemany(_INSERT_ROW, map(_row, batch.rows))
        new = conn.total_changes - before
        now = _now_iso()
        letters: dict[str, int] = {}
        for stage, group in by_stage(batch.dead_letters).items():
            before = conn.total_changes
            conn.executemany(_INSERT_DEAD, [(*dead_letter_params(d), now) for d in group])
            letters[stage] = conn.total_changes - before
        if batch.checkpoint is not None:
            conn.execute(
                _UPSERT_CHECKPOINT,
                (batch.stream, batch.shard_id, batch.checkpoint, batch.fence.lease_counter, now),
            )
        return new, letters

    async def get_checkpoint(self, stream: str, shard_id: str) -> str | None:
        def get() -> str | None:
            row = self._db().execute(_SQL.get_checkpoint, (stream, shard_id)).fetchone()
            return None if row is None else str(row[0])

        return await self._call(get)

    async def checkpoints(self, stream: str) -> list[Checkpoint]:
        def get() -> list[Checkpoint]:
            rows = self._db().execute(_SQL.checkpoints, (stream,)).fetchall()
            return [Checkpoint(r[0], r[1], r[2], int(r[3]), _parse_time(r[4])) for r in rows]

        return await self._call(get)

    async def list_dead_letters(
        self, *, stage: str | None = None, reason_like: str | None = None, limit: int = 1000
    ) -> list[StoredDeadLetter]:
        def get() -> list[StoredDeadLetter]:
            sql = (
                "SELECT id, stage, reason, payload, shard_id, sequence_number, created_at "
                "FROM shardflow_dead_letters WHERE (? IS NULL OR stage = ?) "
                "AND (? IS NULL OR reason LIKE ?) ORDER BY id LIMIT ?"
            )
            rows = self._db().execute(sql, (stage, stage, reason_like, reason_like, limit)).fetchall()
            return [StoredDeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], _parse_time(r[6])) for r in rows]

        return await self._call(get)

    async def delete_dead_letters(self, ids: Sequence[int]) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ", ".join("?" for _ in chunk)
                conn.execute(f"DELETE FROM shardflow_dead_letters WHERE id IN ({marks})", chunk)
            return conn.total_changes - before

        if not ids:
            return 0
        return await self._call(self._transaction, delete)

    async def query(self, sql: str, *, limit: int = 10_000) -> QueryResult:
        def run() -> QueryResult:
            if self._reader is None:
                raise WarehouseUnavailable(f"SQLite warehouse {self.path} is closed")
            try:
                cursor = self._reader.execute(sql)
                columns = tuple(d[0] for d in cursor.description or ())
                rows = [tuple(r) for r in itertools.islice(cursor, max(limit, 0))]
                cursor.close()
            except sqlite3.Error as exc:
                if self._reader.in_transaction:
                    self._reader.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                    raise
                raise InvalidRequest(f"query refused: {exc}") from exc
            return QueryResult(columns, rows)

        return await self._call(run)

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(
                self._call(lambda: self._db().execute("SELECT 1").fetchone()), _PING_TIMEOUT
            )
        except (WarehouseUnavailable, ConfigError, TimeoutError):
            return False
        return True

    # -- LeaseStore ----------------------------------------------------------------------------

    async def create_leases(self, stream: str, shards: Sequence[ShardInfo]) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO shardflow_leases (stream, shard_id, parent_shard_ids) "
                "VALUES (?, ?, ?)",
                [(stream, s.shard_id, parents_json(s.parent_shard_ids)) for s in shards],
            )

        await self._call(self._transaction, create, urgent=True)

    @staticmethod
    def _lease(conn: sqlite3.Connection, stream: str, shard_id: str) -> Lease:
        return lease_from_row(*conn.execute(_SQL.lease, (stream, shard_id)).fetchone())

    async def list_leases(self, stream: str) -> list[Lease]:
        def get() -> list[Lease]:
            return [lease_from_row(*r) for r in self._db().execute(_SQL.leases, (stream,)).fetchall()]

        return await self._call(get, urgent=True)

    async def take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None:
        def take(conn: sqlite3.Connection) -> Lease | None:
            cursor = conn.execute(
                "UPDATE shardflow_leases SET owner = ?, lease_counter = lease_counter + 1, "
                "expires_at = ?, handoff_to = NULL WHERE stream = ? AND shard_id = ? AND lease_counter = ?",
                (owner, time.time() + ttl, stream, shard_id, expected_counter),
            )
            if cursor.rowcount != 1:
                return None
            return self._lease(conn, stream, shard_id)

        return await self._call(self._transaction, take, urgent=True)

    async def renew_leases(
        self,
        stream: str,
        owner: str,
        held: Mapping[str, int],
        ttl: float,
        rates: Mapping[str, float] | None = None,
    ) -> dict[str, Lease]:
        def renew(conn: sqlite3.Connection) -> dict[str, Lease]:
            expires = time.time() + ttl
            kept: dict[str, Lease] = {}
            for shard_id, counter in held.items():
                cursor = conn.execute(
                    "UPDATE shardflow_leases SET expires_at = ?, "
                    "records_per_second = coalesce(?, records_per_second) "
                    "WHERE stream = ? AND shard_id = ? AND owner = ? AND lease_counter = ?",
                    (expires, (rates or {}).get(shard_id), stream, shard_id, owner, counter),
                )
                if cursor.rowcount == 1:
                    kept[shard_id] = self._lease(conn, stream, shard_id)
            return kept

        if not held:
            return {}
        return await self._call(self._transaction, renew, urgent=True)

    async def release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool:
        def release(conn: sqlite3.Connection) -> bool:
            return conn.execute(_SQL.release, (stream, shard_id, owner, lease_counter)).rowcount == 1

        return await self._call(self._transaction, release, urgent=True)

    async def request_handoff(self, stream: str, shard_id: str, requester: str) -> None:
        def ask(conn: sqlite3.Connection) -> None:
            conn.execute(_SQL.handoff, (requester, stream, shard_id, requester))

        await self._call(self._transaction, ask, urgent=True)

    async def now(self) -> float:
        return time.time()
