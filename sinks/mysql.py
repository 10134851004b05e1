"""MySQL/MariaDB warehouse through aiomysql: LOAD DATA LOCAL INFILE inside one fenced transaction.

A batch is one InnoDB transaction: `LOAD DATA LOCAL INFILE` the rows into a temporary staging
table (tab-separated files under 8 MiB each, as aiomysql fails on files near 16 MiB), then lock
the shard's lease row only if it is still ours (`SELECT ... AND owner AND lease_counter FOR
UPDATE`: the fence), `INSERT IGNORE ... SELECT` the staged rows into `page_views` (duplicates by
`event_id` are skipped; a row skipped or changed for any other reason is refused), insert the
dead letters (`INSERT IGNORE`: a repeat by `dedup_key` is skipped), upsert the checkpoint,
commit. LOAD DATA measured ≈3x faster than multi-row `INSERT IGNORE`, which is bound by
Python-side escaping; a server that refuses LOAD DATA LOCAL (MySQL 8's default
`local_infile=OFF`) gets multi-row `INSERT` into the staging table instead. utf8mb4
everywhere, so emoji survive.

The lease row is locked last, for the short merge-and-checkpoint window: a consumer stopped or
cut off while it loads holds no lock another consumer needs. What is left is bounded: on
MariaDB every session carries `idle_transaction_timeout`, so the server ends one stopped inside
a transaction that holds a lock (the locked window, or a lease change, which here is an UPDATE
and a SELECT); MySQL has no such setting, so there the sessions carry a short `wait_timeout`
(the pool recycles idle connections before it) that ends any session idle that long. Lease
sessions carry a short `innodb_lock_wait_timeout`, so a take that meets the lock gives up (a
lost race, retried on the next cycle) instead of hanging for InnoDB's 50 s.

Lease operations use a pool of their own and the server clock (`NOW(6)`). `query` runs on a
connection of its own whose session is READ ONLY, so neither DML nor DDL can get through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomysql
import pymysql  # type: ignore[import-untyped]
from pymysql.constants import CLIENT  # type: ignore[import-untyped]

from processor.errors import (
    ConfigError,
    InvalidRequest,
    LeaseLost,
    RowsRejected,
    ShardflowError,
    WarehouseUnavailable,
)
from processor.streams.base import ShardInfo
from processor.uris import mask_uri
from sinks._pooled import PooledWarehouse, WriteAgain
from sinks._shared import (
    DEAD_LETTER_COLUMNS,
    LOAD_COLUMNS,
    LockBusy,
    by_stage,
    dead_letter_params,
    lease_from_row,
    lease_lost,
    parents_json,
    shared_sql,
)
from sinks.base import PAGE_VIEW_COLUMNS, Batch, Checkpoint, Lease, PageView, QueryResult, StoredDeadLetter
from sinks.schema import VERSION_TABLE, pending_steps

__all__ = ["MAX_LOAD_FILE_BYTES", "MysqlWarehouse", "load_data_files", "load_data_sql"]

log = logging.getLogger(__name__)

MAX_LOAD_FILE_BYTES = 8 * 1024 * 1024
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_NOW = "UNIX_TIMESTAMP(NOW(6))"
_SQL = shared_sql("%s")
_INSERT_DEAD = (
    f"INSERT IGNORE INTO shardflow_dead_letters ({DEAD_LETTER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO shardflow_checkpoints (stream, shard_id, sequence_number, lease_counter, updated_at) "
    "VALUES (%s, %s, %s, %s, NOW(6)) ON DUPLICATE KEY UPDATE sequence_number = VALUES(sequence_number), "
    "lease_counter = VALUES(lease_counter), updated_at = VALUES(updated_at)"
)
# Quoted text and comments, so that a file clause is looked for in the statement itself only.
_QUOTED_OR_COMMENT = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`|/\*.*?\*/|(?:--\s|#)[^\n]*",
    re.DOTALL,
)
_FILE_CLAUSE = re.compile(r"\bINTO\s+(?:OUTFILE|DUMPFILE)\b", re.IGNORECASE)


def writes_server_file(sql: str) -> bool:
    """True for `SELECT ... INTO OUTFILE/DUMPFILE`, which a READ ONLY transaction does not stop."""
    return _FILE_CLAUSE.search(_QUOTED_OR_COMMENT.sub(" ", sql)) is not None


_RETRIABLE_CODES = frozenset(
    (
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1213,  # deadlock
        1927,  # connection killed
        2003,  # can't connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2014,
        2055,
    )
)
_LOAD_DATA_REFUSED = frozenset((1148, 3948, 3950, 4166))
"""The server (or its local_infile setting) does not allow LOAD DATA LOCAL."""
_INSERT_CHUNK = 1000
_STAGE = "shardflow_stage"
_DROP_STAGE = f"DROP TEMPORARY TABLE IF EXISTS {_STAGE}"
_CREATE_STAGE = "CREATE TEMPORARY TABLE {stage} {engine} SELECT {columns} FROM page_views LIMIT 0"
"""Keyless, so loading it costs no index work; neither statement commits (TRUNCATE would).
On MariaDB in Aria, ≈20% faster to load than InnoDB for a table that is made anew per batch."""
_INSERT_STAGE = f"INSERT INTO {_STAGE} ({LOAD_COLUMNS}) VALUES ({', '.join(['%s'] * len(PAGE_VIEW_COLUMNS))})"
_MERGE = f"INSERT IGNORE INTO page_views ({LOAD_COLUMNS}) SELECT {LOAD_COLUMNS} FROM {_STAGE}"
"""IGNORE skips a duplicate event_id with a warning, but also a row the table refuses (a CHECK
failing) or changes one (a value cut to fit): `_check_refusals` tells them apart."""
_MISSING = (
    f"SELECT COUNT(*) FROM {_STAGE} s WHERE NOT EXISTS "
    "(SELECT 1 FROM page_views p WHERE p.event_id = s.event_id)"
)
_FENCE = (
    "SELECT 1 FROM shardflow_leases WHERE stream = %s AND shard_id = %s AND owner = %s "
    "AND lease_counter = %s FOR UPDATE"
)
_CONFIG_CODES = frozenset((1044, 1045, 1049, 1698))  # access denied, unknown database
_ROW_CODES = frozenset(
    (
        1048,  # column cannot be null
        1264,  # out of range value
        1265,  # data truncated
        1292,  # incorrect datetime value
        1366,  # incorrect string value
        1406,  # data too long
        1644,  # SIGNAL from a trigger on the table
        1690,  # value out of range
        3140,  # invalid JSON text (MySQL)
        3819,  # check constraint violated (MySQL)
        4025,  # CONSTRAINT failed (MariaDB: CHECK, JSON_VALID)
    )
)
"""A value of the batch the table refuses, not the warehouse failing."""


class _QuietCursor(aiomysql.Cursor):  # type: ignore[misc]
    """A cursor that skips aiomysql's SHOW WARNINGS round trip: duplicates skipped by IGNORE
    are expected, and the extra query per LOAD DATA costs time on every batch. How many warnings
    the last statement raised is still known (`warning_count`), for a caller that must look."""

    async def _show_warnings(self, conn: Any) -> None:
        return None

    @property
    def warning_count(self) -> int:
        return int(self._result.warning_count) if self._result is not None else 0


async def _check_refusals(cur: Any, skipped: int) -> None:
    """RowsRejected when the merge's IGNORE skipped or changed a staged row for anything but a
    duplicate event_id: a warning more than the rows skipped (a row changed to fit), or a skipped
    row not in page_views after all (refused, as by a CHECK)."""
    warnings = cur.warning_count
    await cur.execute("SHOW WARNINGS")
    found = [f"({code}, {message!r})" for _, code, message in await cur.fetchall() if code != 1062]
    refused = warnings > skipped
    if not refused and skipped:
        await cur.execute(_MISSING)
        (missing,) = await cur.fetchone()
        refused = missing > 0
    if refused:
        raise RowsRejected(
            "write_batch: page_views refused rows: " + "; ".join(found or ["(no detail kept)"])
        )


def load_data_sql(table: str = "page_views") -> str:
    """The LOAD DATA statement for files written by `load_data_files` (filename as parameter)."""
    return (
        f"LOAD DATA LOCAL INFILE %s IGNORE INTO TABLE {table} CHARACTER SET utf8mb4 "
        "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
        f"({LOAD_COLUMNS})"
    )


_TABS = len(PAGE_VIEW_COLUMNS) - 1
MAX_LOAD_FILE_CHARS = MAX_LOAD_FILE_BYTES // 4
"""Characters per file: UTF-8 takes at most 4 bytes for one, so a file stays under 8 MiB."""


def _text(value: object) -> str:
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, datetime):
        text = value.isoformat(" ")
        if text.endswith("+00:00"):
            return text[:-6]
        if value.tzinfo is None:
            return text
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")
    return str(value)


def _line(row: PageView) -> str:
    """One row in LOAD DATA's text format; escaping only when a value needs it (rarely)."""
    fields = [v if type(v) is str else "\\N" if v is None else _text(v) for v in row]
    line = "\t".join(fields)
    if (
        line.count("\t") != _TABS
        or line.count("\\") != row.count(None)
        or "\n" in line
        or "\r" in line
        or "\0" in line
    ):
        line = "\t".join(
            "\\N" if v is None else (v if type(v) is str else _text(v)).translate(_ESCAPES) for v in row
        )
    return line


def load_data_files(rows: Iterable[PageView], directory: str | None = None) -> list[str]:
    """Write rows as LOAD DATA text files of at most MAX_LOAD_FILE_BYTES each; returns their paths.

    Blocking file work: call it in a thread. The caller deletes the files.
    """
    paths: list[str] = []
    lines: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        fd, path = tempfile.mkstemp(prefix="shardflow-load-", suffix=".tsv", dir=directory)
        paths.append(path)
        with os.fdopen(fd, "wb") as f:
            f.write("".join(lines).encode("utf-8"))
        lines.clear()
        size = 0

    try:
        for row in rows:
            line = _line(row) + "\n"
            if size + len(line) > MAX_LOAD_FILE_CHARS and lines:
                flush()
            lines.append(line)
            size += len(line)
        if lines:
            flush()
    except BaseException:
        _remove(paths)
        raise
    return paths


def _seconds(value: float) -> int:
    return max(1, round(value))


def _remove(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class MysqlWarehouse(PooledWarehouse):
    """`sinks.base.Warehouse` on MySQL/MariaDB; see the module docstring for the guarantees."""

    def __init__(self, uri: str, **options: Any) -> None:
        """`options` as `PooledWarehouse` takes them (pool size, timeouts)."""
        parts = urlsplit(uri)
        database = unquote(parts.path.lstrip("/"))
        if parts.scheme not in ("mysql", "mariadb") or not database:
            raise ConfigError(f"MySQL URI must be mysql://user:password@host:3306/database: {mask_uri(uri)}")
        super().__init__(uri, **options)
        self._connect: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "db": database,
            "charset": "utf8mb4",
            "autocommit": False,
            "local_infile": True,
            "client_flag": CLIENT.FOUND_ROWS,
            "init_command": "SET time_zone = '+00:00'",
            "connect_timeout": self.connect_timeout,
            "cursorclass": _QuietCursor,
        }
        self.load_data = True
        """LOAD DATA LOCAL INFILE (fast); False after the server refused it: multi-row INSERT IGNORE."""
        self._mariadb = True
        self._create_stage = _CREATE_STAGE.format(stage=_STAGE, engine="", columns=LOAD_COLUMNS)

    @classmethod
    def from_uri(cls, uri: str) -> MysqlWarehouse:
        return cls(uri)

    # -- connections and errors ------------------------------------------------------------

    def _translate(self, exc: Exception, where: str) -> ShardflowError | None:
        """The one place aiomysql/pymysql and socket errors become shardflow errors."""
        if isinstance(exc, pymysql.err.MySQLError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            message = f"{where}: {exc}"
            if code in _CONFIG_CODES:
                return ConfigError(message)
            if code in _ROW_CODES:
                return RowsRejected(message)
            if code == 1205:
                return LockBusy(message)
            if (
                code in _RETRIABLE_CODES
                or code >= 2000
                or isinstance(exc, pymysql.err.InterfaceError | pymysql.err.OperationalError)
            ):
                return WarehouseUnavailable(message)
            return InvalidRequest(message)
        if isinstance(exc, OSError | TimeoutError | RuntimeError):
            # aiomysql raises RuntimeError for a read on a connection the server closed
            return WarehouseUnavailable(f"{where}: {exc!r}")
        return None

    async def _make_pool(self, leases: bool) -> aiomysql.Pool:
        settings = ["time_zone = '+00:00'"]
        recycle = 300
        if leases:
            settings.append(f"innodb_lock_wait_timeout = {_seconds(self.lock_timeout)}")
        # lease changes here are transactions of two statements, so both pools need the bound
        if self._mariadb:
            settings.append(f"idle_transaction_timeout = {_seconds(self.idle_timeout)}")
        else:
            settings.append(f"wait_timeout = {_seconds(self.idle_timeout) + 1}")
            recycle = _seconds(self.idle_timeout)
        options = {**self._connect, "init_command": "SET " + ", ".join(settings)}
        return await aiomysql.create_pool(
            minsize=1, maxsize=2 if leases else self.pool_size, pool_recycle=recycle, **options
        )

    @asynccontextmanager
    async def _transaction(self, what: str, *, leases: bool = False) -> AsyncIterator[Any]:
        """A cursor in a transaction: committed on success; on failure rolled back, and a
        connection that broke is closed so the pool never hands it out again."""
        timeout = self.lease_timeout if leases else self.command_timeout
        async with self._errors(what):
            pool = await self._pool(leases)
            async with asyncio.timeout(self.connect_timeout):
                conn = await pool.acquire()
            try:
                async with asyncio.timeout(timeout):
                    await conn.begin()
                    async with conn.cursor() as cur:
                        yield cur
                    await conn.commit()
            except BaseException as exc:
                if isinstance(exc, LeaseLost):
                    await self._rollback(conn)
                else:
                    conn.close()
                raise
            finally:
                pool.release(conn)

    @staticmethod
    async def _rollback(conn: Any) -> None:
        try:
            async with asyncio.timeout(5.0):
                await conn.rollback()
        except (pymysql.err.MySQLError, OSError, TimeoutError, RuntimeError):
            conn.close()

    # -- lifecycle -------------------------------------------------------------------------

    async def _prepare(self) -> None:
        self._mariadb = await self._is_mariadb()
        engine = "ENGINE=Aria" if self._mariadb else ""
        self._create_stage = _CREATE_STAGE.format(stage=_STAGE, engine=engine, columns=LOAD_COLUMNS)

    async def _is_mariadb(self) -> bool:
        """Which server this is decides the session settings: MySQL lacks idle_transaction_timeout."""
        conn = await aiomysql.connect(**self._connect)
        try:
            async with asyncio.timeout(self.lease_timeout), conn.cursor() as cur:
                await cur.execute("SELECT VERSION()")
                (version,) = await cur.fetchone()
        finally:
            conn.close()
        return "mariadb" in str(version).lower()

    async def _migrate(self, writes: aiomysql.Pool) -> None:
        async with writes.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT GET_LOCK('shardflow_schema', 60)")
            try:
                await cur.execute(VERSION_TABLE["mysql"])
                await cur.execute("SELECT coalesce(max(version), 0) FROM shardflow_schema_version")
                (current,) = await cur.fetchone()
                for version, statements in pending_steps("mysql", int(current)):
                    for statement in statements:
                        await cur.execute(statement)
                    await cur.execute(
                        "INSERT INTO shardflow_schema_version (version) VALUES (%s)", (version,)
                    )
                    await conn.commit()
            finally:
                await cur.execute("SELECT RELEASE_LOCK('shardflow_schema')")
                await conn.commit()

    async def _close_pool(self, pool: aiomysql.Pool) -> None:
        pool.close()
        await pool.wait_closed()

    def _terminate_pool(self, pool: aiomysql.Pool) -> None:
        pool.terminate()

    # -- Sink --------------------------------------------------------------------------------

    async def _write(self, batch: Batch) -> tuple[int, dict[str, int]]:
        """(new rows, new dead letters by stage)."""
        use_files = self.load_data and bool(batch.rows)
        paths = await asyncio.to_thread(load_data_files, batch.rows) if use_files else []
        new = 0
        filed: dict[str, int] = {}
        try:
            async with self._transaction("write_batch") as cur:
                if batch.rows:
                    await cur.execute(_DROP_STAGE)
                    await cur.execute(self._create_stage)
                try:
                    for path in paths:
                        await cur.execute(load_data_sql(_STAGE), (path,))
                except pymysql.err.MySQLError as exc:
                    if exc.args and exc.args[0] in _LOAD_DATA_REFUSED:
                        log.warning("%s refuses LOAD DATA LOCAL INFILE; loading with INSERT", self._shown())
                        self.load_data = False
                        raise WriteAgain(str(exc), batch) from exc
                    raise
                if not use_files:
                    for start in range(0, len(batch.rows), _INSERT_CHUNK):
                        chunk = batch.rows[start : start + _INSERT_CHUNK]
                        await cur.executemany(_INSERT_STAGE, [tuple(r) for r in chunk])
                await cur.execute(
                    _FENCE, (batch.stream, batch.shard_id, batch.fence.owner, batch.fence.lease_counter)
                )
                if await cur.fetchone() is None:
                    raise lease_lost(batch)
                if batch.rows:
                    new = await cur.execute(_MERGE)
                    if cur.warning_count:
                        await _check_refusals(cur, skipped=len(batch.rows) - new)
                for stage, group in by_stage(batch.dead_letters).items():
                    filed[stage] = await cur.executemany(_INSERT_DEAD, list(map(dead_letter_params, group)))
                if batch.checkpoint is not None:
                    await cur.execute(
                        _UPSERT_CHECKPOINT,
                        (batch.stream, batch.shard_id, batch.checkpoint, batch.fence.lease_counter),
                    )
        finally:
            if paths:
                await asyncio.to_thread(_remove, paths)
        return new, filed

    async def get_checkpoint(self, stream: str, shard_id: str) -> str | None:
        async with self._transaction("get_checkpoint", leases=True) as cur:
            await cur.execute(_SQL.get_checkpoint, (stream, shard_id))
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def checkpoints(self, stream: str) -> list[Checkpoint]:
        async with self._transaction("checkpoints", leases=True) as cur:
            await cur.execute(_SQL.checkpoints, (stream,))
            rows = await cur.fetchall()
        return [Checkpoint(r[0], r[1], r[2], int(r[3]), r[4].replace(tzinfo=UTC)) for r in rows]

    async def list_dead_letters(
        self, *, stage: str | None = None, reason_like: str | None = None, limit: int = 1000
    ) -> list[StoredDeadLetter]:
        async with self._transaction("list_dead_letters") as cur:
            await cur.execute(
                "SELECT id, stage, reason, payload, shard_id, sequence_number, created_at "
                "FROM shardflow_dead_letters WHERE (%s IS NULL OR stage = %s) "
                "AND (%s IS NULL OR reason LIKE %s) ORDER BY id LIMIT %s",
                (stage, stage, reason_like, reason_like, limit),
            )
            rows = await cur.fetchall()
        return [
            StoredDeadLetter(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6].replace(tzinfo=UTC)) for r in rows
        ]

    async def delete_dead_letters(self, ids: Sequence[int]) -> int:
        deleted = 0
        if not ids:
            return 0
        async with self._transaction("delete_dead_letters") as cur:
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start : start + 500]]
                marks = ", ".join(["%s"] * len(chunk))
                deleted += await cur.execute(
                    f"DELETE FROM shardflow_dead_letters WHERE id IN ({marks})", chunk
                )
        return deleted

    async def query(self, sql: str, *, limit: int = 10_000) -> QueryResult:
        """On a connection of its own whose session is READ ONLY (DDL is refused too)."""
        if writes_server_file(sql):
            raise InvalidRequest("query refused: INTO OUTFILE/DUMPFILE writes a file on the database server")
        async with self._errors("query"):
            conn = await aiomysql.connect(**self._connect)
            try:
                async with asyncio.timeout(self.command_timeout), conn.cursor() as cur:
                    await cur.execute("SET SESSION TRANSACTION READ ONLY")
                    await cur.execute("START TRANSACTION READ ONLY")
                    try:
                        await cur.execute(sql)
                    except pymysql.err.MySQLError as exc:
                        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                        if code < 2000 and code not in _RETRIABLE_CODES and code not in _CONFIG_CODES:
                            raise InvalidRequest(f"query refused: {exc}") from exc
                        raise
                    columns = tuple(d[0] for d in cur.description or ())
                    rows = [tuple(r) for r in await cur.fetchmany(limit)] if limit > 0 and columns else []
                    await conn.rollback()
            finally:
                conn.close()
        return QueryResult(columns, rows)

    async def _ping(self) -> None:
        async with self._transaction("ping", leases=True) as cur:
            await cur.execute("SELECT 1")

    # -- LeaseStore ----------------------------------------------------------------------------

    async def create_leases(self, stream: str, shards: Sequence[ShardInfo]) -> None:
        if not shards:
            return
        async with self._transaction("create_leases", leases=True) as cur:
            await cur.executemany(
                "INSERT IGNORE INTO shardflow_leases (stream, shard_id, parent_shard_ids) "
                "VALUES (%s, %s, %s)",
                [(stream, s.shard_id, parents_json(s.parent_shard_ids)) for s in shards],
            )

    @staticmethod
    async def _select_lease(cur: Any, stream: str, shard_id: str) -> Lease:
        await cur.execute(_SQL.lease, (stream, shard_id))
        return lease_from_row(*await cur.fetchone())

    async def list_leases(self, stream: str) -> list[Lease]:
        async with self._transaction("list_leases", leases=True) as cur:
            await cur.execute(_SQL.leases, (stream,))
            return [lease_from_row(*r) for r in await cur.fetchall()]

    async def _take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None:
        async with self._transaction("take_lease", leases=True) as cur:
            changed = await cur.execute(
                f"UPDATE shardflow_leases SET owner = %s, lease_counter = lease_counter + 1, "
                f"expires_at = {_NOW} + %s, handoff_to = NULL "
                "WHERE stream = %s AND shard_id = %s AND lease_counter = %s",
                (owner, ttl, stream, shard_id, expected_counter),
            )
            if changed != 1:
                return None
            return await self._select_lease(cur, stream, shard_id)

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
        kept: dict[str, Lease] = {}
        async with self._transaction("renew_leases", leases=True) as cur:
            for shard_id, counter in held.items():
                changed = await cur.execute(
                    f"UPDATE shardflow_leases SET expires_at = {_NOW} + %s, "
                    "records_per_second = coalesce(%s, records_per_second) "
                    "WHERE stream = %s AND shard_id = %s AND owner = %s AND lease_counter = %s",
                    (ttl, (rates or {}).get(shard_id), stream, shard_id, owner, counter),
                )
                if changed == 1:
                    kept[shard_id] = await self._select_lease(cur, stream, shard_id)
        return kept

    async def _release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool:
        async with self._transaction("release_lease", leases=True) as cur:
            changed = await cur.execute(_SQL.release, (stream, shard_id, owner, lease_counter))
        return bool(changed == 1)

    async def _request_handoff(self, stream: str, shard_id: str, requester: str) -> None:
        async with self._transaction("request_handoff", leases=True) as cur:
            await cur.execute(_SQL.handoff, (requester, stream, shard_id, requester))

    async def now(self) -> float:
        async with self._transaction("now", leases=True) as cur:
            await cur.execute(f"SELECT {_NOW}")
            (value,) = await cur.fetchone()
        return float(value)
