"""The embedded stream's log: an append-only SQLite file (WAL) with Kinesis semantics.

Synchronous on purpose: every method runs on the one thread `EmbeddedStream` dedicates to its
connection, and raises `sqlite3` errors that `EmbeddedStream` translates in one place.

Layout. `streams` names each stream in the file; `shards` holds every shard ever created (hash
range as decimal text, parents, the last local sequence it assigned, and `ending_local` once
closed); `records` is the log itself, keyed by `sid << 40 | local` so that one shard's records
are one contiguous rowid range: a read is an indexed range scan, a trim deletes a prefix. Nothing
is ever updated in place but a shard's counters: readers keep their own position in iterators.

Several processes may share the file: appends and reshards take the write lock with
`BEGIN IMMEDIATE` (waiting up to the busy timeout), reads run in a WAL snapshot and never block
writers. One append may carry several PutRecords calls (group commit): one transaction, one fsync.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, TypeAlias

from processor.sqlite_wal import enable_wal
from processor.streams.base import MAX_HASH_KEY, PutRecord, PutResult, Record, ShardInfo

__all__ = [
    "LOCAL_BITS",
    "LogError",
    "NoSuchStream",
    "Put",
    "ReadResult",
    "ShardRow",
    "SqliteLog",
    "format_sequence",
    "parse_sequence",
    "sequence_head",
    "shard_id_for",
    "uniform_ranges",
]

LOCAL_BITS: Final = 40
"""Bits of a record id that hold its position inside the shard (10^12 records per shard)."""
logger = logging.getLogger(__name__)

_SEQ_PREFIX: Final = 49 * 10**54
_SEQ_SHARD: Final = 10**30
_SHARD_PREFIX: Final = "shardId-"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    sid INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL REFERENCES streams (id),
    idx INTEGER NOT NULL,
    start_hash TEXT NOT NULL,
    end_hash TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '',
    last_local INTEGER NOT NULL DEFAULT 0,
    ending_local INTEGER,
    created_at REAL NOT NULL,
    closed_at REAL,
    UNIQUE (stream_id, idx)
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    arrival REAL NOT NULL
);
"""


Put: TypeAlias = tuple[Sequence[PutRecord], Sequence[int]]
"""One PutRecords call for `SqliteLog.put`: its records and their hash keys, in the same order."""


class LogError(Exception):
    """A request the log refuses (unknown shard, bad sequence number, shards not adjacent)."""


class NoSuchStream(Exception):
    """The file holds no stream of this name (yet)."""


def shard_id_for(idx: int) -> str:
    return f"{_SHARD_PREFIX}{idx:012d}"


def _shard_idx(shard_id: str) -> int:
    if not shard_id.startswith(_SHARD_PREFIX) or not shard_id[len(_SHARD_PREFIX) :].isdigit():
        raise LogError(f"invalid shard id {shard_id!r}: expected shardId-NNNNNNNNNNNN")
    return int(shard_id[len(_SHARD_PREFIX) :])


def format_sequence(idx: int, local: int) -> str:
    """An AWS-like 56-digit sequence number: unique across shards, increasing within one."""
    return str(_SEQ_PREFIX + idx * _SEQ_SHARD + local)


def sequence_head(idx: int) -> str:
    """The 26 digits every sequence number of shard `idx` starts with; 30 digits of local follow.

    `format_sequence(idx, local) == sequence_head(idx) + f"{local:030d}"`, which reads and puts
    use: formatting a 56-digit integer per record costs more than pasting two strings.
    """
    return str((_SEQ_PREFIX + idx * _SEQ_SHARD) // _SEQ_SHARD)


def parse_sequence(sequence_number: str, idx: int) -> int:
    """The local position of `sequence_number` in shard `idx`; LogError if it is not of that shard."""
    try:
        value = int(sequence_number) - _SEQ_PREFIX
    except ValueError:
        raise LogError(f"invalid sequence number {sequence_number!r}: not a decimal number") from None
    if value < 0 or value // _SEQ_SHARD != idx:
        raise LogError(f"sequence number {sequence_number} does not belong to shard {shard_id_for(idx)}")
    return value % _SEQ_SHARD


def uniform_ranges(count: int) -> list[tuple[int, int]]:
    """`count` hash-key ranges covering 0..2^128-1, split exactly as CreateStream splits them."""
    step = (MAX_HASH_KEY + 1) // count
    return [(i * step, MAX_HASH_KEY if i == count - 1 else (i + 1) * step - 1) for i in range(count)]


@dataclass(frozen=True, slots=True)
class ShardRow:
    sid: int
    idx: int
    start: int
    end: int
    parents: tuple[str, ...]
    last_local: int
    ending_local: int | None
    closed_at: float | None

    @property
    def shard_id(self) -> str:
        return shard_id_for(self.idx)

    @property
    def base(self) -> int:
        return self.sid << LOCAL_BITS

    def info(self) -> ShardInfo:
        return ShardInfo(
            shard_id=self.shard_id,
            starting_hash_key=self.start,
            ending_hash_key=self.end,
            parent_shard_ids=self.parents,
            starting_sequence=format_sequence(self.idx, 0),
            ending_sequence=None
            if self.ending_local is None
            else format_sequence(self.idx, self.ending_local),
        )


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: tuple[Record, ...]
    next_local: int
    at_end: bool
    """The shard is closed and every record of it has been read."""
    millis_behind: int
    child_shard_ids: tuple[str, ...]


_SHARD_COLUMNS: Final = "sid, idx, start_hash, end_hash, parents, last_local, ending_local, closed_at"


def _shard_row(row: tuple[Any, ...]) -> ShardRow:
    sid, idx, start, end, parents, last_local, ending_local, closed_at = row
    return ShardRow(
        sid=sid,
        idx=idx,
        start=int(start),
        end=int(end),
        parents=tuple(parents.split(",")) if parents else (),
        last_local=last_local,
        ending_local=ending_local,
        closed_at=closed_at,
    )


_as_record: Final = tuple.__new__
"""Record from a row already in its field order, without the NamedTuple constructor's call."""


_RESULT_FIELDS: Final = ("shard_id", "sequence_number", "error_code", "error_message")
if tuple(f.name for f in fields(PutResult)) != _RESULT_FIELDS:
    raise ImportError(f"PutResult's fields changed: update _ok_results in {__name__}")
_set_shard_id, _set_sequence_number, _set_error_code, _set_error_message = (
    PutResult.__dict__[name].__set__ for name in _RESULT_FIELDS
)
_new: Final = object.__new__


def _ok_results(shard_ids: list[str], sequence_numbers: list[str]) -> list[PutResult]:
    """`[PutResult(s, n) for s, n in zip(...)]` in a quarter of the time.

    The frozen dataclass's `__init__` sets each field through `object.__setattr__` (2 µs a
    result); this fills the slots column by column from C (`map` over the slot descriptors).
    """
    results = list(map(_new, repeat(PutResult, len(shard_ids))))
    deque(map(_set_shard_id, results, shard_ids), 0)
    deque(map(_set_sequence_number, results, sequence_numbers), 0)
    deque(map(_set_error_code, results, repeat(None)), 0)
    deque(map(_set_error_message, results, repeat(None)), 0)
    return results


_partition_key: Final = attrgetter("partition_key")
_data: Final = attrgetter("data")
_INSERT_ROWS: Final = 500
"""Rows per INSERT statement (3 parameters each and the shared arrival: far below SQLite's 32,766)."""


@lru_cache(maxsize=_INSERT_ROWS)
def _insert_sql(rows: int) -> str:
    """One INSERT of `rows` rows: the arrival they share as `?1`, then (id, key, data) each.

    `?1` comes first in the text, so each bare `?` numbers on from it. A multi-row VALUES costs
    3.5 µs a row where `executemany` costs 5.5 (one statement run, not one per row).
    """
    return "INSERT INTO records (arrival, id, partition_key, data) VALUES " + ",".join(
        ["(?1, ?, ?, ?)"] * rows
    )


def _within(rows: list[Any], max_bytes: int) -> list[Any]:
    """The longest prefix of `rows` within `max_bytes` of data and key, but at least one row."""
    size = 0
    for i, row in enumerate(rows):
        size += len(row[2]) + len(row[1])
        if size > max_bytes and i:
            return rows[:i]
    return rows


class SqliteLog:
    """One connection to the log file, for one stream name. Not thread-safe: one thread only."""

    def __init__(self, path: Path, name: str, *, busy_timeout: float, retention: float) -> None:
        self.path = path
        self.name = name
        self.retention = retention
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            enable_wal(self._conn, busy_timeout)
            # FULL: a put is on disk when it returns, as Kinesis acknowledges only stored records;
            # in WAL mode that is one fsync per 500-record transaction, cheap next to the insert.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise
        self._stream_id: int | None = None
        self._last_trim = 0.0
        self._trim_interval = min(60.0, retention / 4)

    def close(self) -> None:
        self._conn.close()

    def _begin(self, immediate: bool) -> None:
        self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _sid(self) -> int | None:
        if self._stream_id is None:
            row = self._conn.execute("SELECT id FROM streams WHERE name = ?", (self.name,)).fetchone()
            if row is not None:
                self._stream_id = int(row[0])
        return self._stream_id

    def _require_stream(self) -> int:
        stream_id = self._sid()
        if stream_id is None:
            raise NoSuchStream(self.name)
        return stream_id

    def _shards(self, stream_id: int, *, open_only: bool = False) -> list[ShardRow]:
        where = " AND ending_local IS NULL" if open_only else ""
        rows = self._conn.execute(
            f"SELECT {_SHARD_COLUMNS} FROM shards WHERE stream_id = ?{where} ORDER BY idx", (stream_id,)
        ).fetchall()
        return [_shard_row(r) for r in rows]

    def _shard(self, stream_id: int, shard_id: str) -> ShardRow:
        idx = _shard_idx(shard_id)
        row = self._conn.execute(
            f"SELECT {_SHARD_COLUMNS} FROM shards WHERE stream_id = ? AND idx = ?", (stream_id, idx)
        ).fetchone()
        if row is None:
            raise LogError(f"shard {shard_id} does not exist in stream {self.name!r}")
        return _shard_row(row)

    # -- stream management -------------------------------------------------------------------

    def create(self, shard_count: int) -> None:
        """Create the stream with uniform shards; a no-op when it exists."""
        self._begin(immediate=True)
        try:
            if self._sid() is None:
                now = time.time()
                cur = self._conn.execute(
                    "INSERT INTO streams (name, created_at) VALUES (?, ?)", (self.name, now)
                )
                stream_id = int(cur.lastrowid or 0)
                self._add_shards(stream_id, 0, uniform_ranges(shard_count), [()] * shard_count, now)
                self._stream_id = stream_id
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._stream_id = None
            raise

    def _add_shards(
        self,
        stream_id: int,
        first_idx: int,
        ranges: Sequence[tuple[int, int]],
        parents: Sequence[Sequence[str]],
        now: float,
    ) -> list[str]:
        rows = [
            (stream_id, first_idx + i, str(start), str(end), ",".join(p), now)
            for i, ((start, end), p) in enumerate(zip(ranges, parents, strict=True))
        ]
        self._conn.executemany(
            "INSERT INTO shards (stream_id, idx, start_hash, end_hash, parents, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        return [shard_id_for(first_idx + i) for i in range(len(rows))]

    def describe(self) -> list[ShardInfo]:
        """Every shard, open or closed, but closed shards whose retention has passed."""
        self._begin(immediate=False)
        try:
            stream_id = self._require_stream()
            shards = self._shards(stream_id)
        finally:
            self._rollback()
        horizon = time.time() - self.retention
        return [s.info() for s in shards if s.closed_at is None or s.closed_at >= horizon]

    def _reshard(self, plan: Any) -> None:
        """Run `plan(stream_id, open_shards, next_idx, now)` in one write transaction."""
        self._begin(immediate=True)
        try:
            stream_id = self._require_stream()
            shards = self._shards(stream_id)
            next_idx = max((s.idx for s in shards), default=-1) + 1
            plan(stream_id, [s for s in shards if s.ending_local is None], next_idx, time.time())
            self._conn.execute("COMMIT")
        finally:
            self._rollback()

    def _close_shards(self, shards: Sequence[ShardRow], now: float) -> None:
        self._conn.executemany(
            "UPDATE shards SET ending_local = last_local, closed_at = ? WHERE sid = ?",
            [(now, s.sid) for s in shards],
        )

    def split_shard(self, shard_id: str, new_starting_hash_key: int | None) -> None:
        def plan(stream_id: int, open_shards: list[ShardRow], next_idx: int, now: float) -> None:
            parent = self._open(open_shards, shard_id)
            split = (
                parent.start + (parent.end - parent.start + 1) // 2
                if new_starting_hash_key is None
                else new_starting_hash_key
            )
            if not parent.start < split <= parent.end:
                raise LogError(
                    f"new starting hash key {split} must lie in ({parent.start}, {parent.end}]"
                    f" of shard {shard_id}"
                )
            self._close_shards([parent], now)
            ranges = [(parent.start, split - 1), (split, parent.end)]
            self._add_shards(stream_id, next_idx, ranges, [(shard_id,), (shard_id,)], now)

        self._reshard(plan)

    def merge_shards(self, shard_id: str, adjacent_shard_id: str) -> None:
        def plan(stream_id: int, open_shards: list[ShardRow], next_idx: int, now: float) -> None:
            a = self._open(open_shards, shard_id)
            b = self._open(open_shards, adjacent_shard_id)
            if a.end + 1 != b.start and b.end + 1 != a.start:
                raise LogError(f"shards {shard_id} and {adjacent_shard_id} are not adjacent")
            self._close_shards([a, b], now)
            ranges = [(min(a.start, b.start), max(a.end, b.end))]
            self._add_shards(stream_id, next_idx, ranges, [(shard_id, adjacent_shard_id)], now)

        self._reshard(plan)

    def update_shard_count(self, target: int) -> None:
        """Close the open shards and open `target` uniform ones, each naming the parents it overlaps.

        A no-op when the open shards already are that uniform layout.
        """

        def plan(stream_id: int, open_shards: list[ShardRow], next_idx: int, now: float) -> None:
            ranges = uniform_ranges(target)
            if [(s.start, s.end) for s in sorted(open_shards, key=lambda s: s.start)] == ranges:
                return
            parents = [
                tuple(s.shard_id for s in open_shards if s.start <= end and start <= s.end)
                for start, end in ranges
            ]
            self._close_shards(open_shards, now)
            self._add_shards(stream_id, next_idx, ranges, parents, now)

        self._reshard(plan)

    def _open(self, open_shards: Sequence[ShardRow], shard_id: str) -> ShardRow:
        idx = _shard_idx(shard_id)
        for s in open_shards:
            if s.idx == idx:
                return s
        row = self._conn.execute(
            "SELECT 1 FROM shards WHERE stream_id = ? AND idx = ?", (self._stream_id, idx)
        ).fetchone()
        state = "is closed" if row else "does not exist"
        raise LogError(f"shard {shard_id} {state} in stream {self.name!r}")

    # -- records -------------------------------------------------------------------------------

    def put(self, calls: Sequence[Put]) -> list[list[PutResult] | Exception]:
        """Append the records of every call, call after call, in one transaction; one outcome each.

        An outcome is the call's results, or the error its own records raised (then none of them
        is stored, and the other calls go on). An error of the transaction itself (the lock not
        granted within the busy timeout, the disk) is raised: no call is stored.
        """
        self._begin(immediate=True)
        try:
            stream_id = self._require_stream()
            shards = sorted(self._shards(stream_id, open_only=True), key=lambda s: s.start)
            starts = [s.start for s in shards]
            # per shard, by its place in `shards`: next local, id base, shard id, sequence head
            nexts = [s.last_local + 1 for s in shards]
            bases = [s.base for s in shards]
            ids = [s.shard_id for s in shards]
            heads = [sequence_head(s.idx) for s in shards]
            single = len(shards) == 1
            bisect_right = bisect.bisect_right
            now = time.time()
            outcomes: list[list[PutResult] | Exception] = []
            for records, keys in calls:
                before = nexts.copy()
                row_ids: list[int] = []
                shard_ids: list[str] = []
                sequence_numbers: list[str] = []
                for key in keys:
                    i = 0 if single else bisect_right(starts, key) - 1
                    local = nexts[i]
                    nexts[i] = local + 1
                    row_ids.append(bases[i] | local)
                    shard_ids.append(ids[i])
                    sequence_numbers.append(f"{heads[i]}{local:030d}")
                error = self._insert(row_ids, records, now)
                if error is not None:
                    nexts = before
                    outcomes.append(error)
                    continue
                outcomes.append(_ok_results(shard_ids, sequence_numbers))
            self._conn.executemany(
                "UPDATE shards SET last_local = ? WHERE sid = ?",
                [(n - 1, s.sid) for s, n in zip(shards, nexts, strict=True) if n - 1 != s.last_local],
            )
            self._conn.execute("COMMIT")
        finally:
            self._rollback()
        if now - self._last_trim >= self._trim_interval:
            try:
                self.trim()
            except sqlite3.Error as exc:
                # The put is committed: failing it now would make the producer put it twice.
                self._last_trim = now
                logger.warning("embedded stream %s: trim failed, retrying later: %s", self.path, exc)
        return outcomes

    def _insert(self, row_ids: list[int], records: Sequence[PutRecord], now: float) -> Exception | None:
        """Insert one call's records under a savepoint; the error they alone raised, if any.

        On that error the savepoint takes back this call's rows, and the other calls of the
        transaction go on. An error after which SQLite rolled the whole transaction back is raised.
        """
        self._conn.execute("SAVEPOINT put")
        try:
            for lo in range(0, len(row_ids), _INSERT_ROWS):
                hi = min(lo + _INSERT_ROWS, len(row_ids))
                chunk = records[lo:hi]
                rows = zip(row_ids[lo:hi], map(_partition_key, chunk), map(_data, chunk), strict=True)
                self._conn.execute(_insert_sql(hi - lo), [now, *chain.from_iterable(rows)])
        except Exception as exc:
            if not self._conn.in_transaction:
                raise
            self._conn.execute("ROLLBACK TO put")
            self._conn.execute("RELEASE put")
            return exc
        self._conn.execute("RELEASE put")
        return None

    def trim(self) -> int:
        """Delete records older than the retention period; returns how many went."""
        self._begin(immediate=True)
        try:
            stream_id = self._require_stream()
            now = time.time()
            cutoff = now - self.retention
            deleted = 0
            for shard in self._shards(stream_id):
                lo, hi = shard.base, shard.base + (1 << LOCAL_BITS)
                # Arrival grows with the id inside a shard, so the kept records are a suffix.
                first_kept = self._conn.execute(
                    "SELECT id FROM records WHERE id >= ? AND id < ? AND arrival >= ? ORDER BY id LIMIT 1",
                    (lo, hi, cutoff),
                ).fetchone()
                bound = hi if first_kept is None else int(first_kept[0])
                deleted += self._conn.execute(
                    "DELETE FROM records WHERE id >= ? AND id < ?", (lo, bound)
                ).rowcount
            self._conn.execute("COMMIT")
            self._last_trim = now
        finally:
            self._rollback()
        return deleted

    def position(self, shard_id: str, kind: str, sequence_number: str | None, timestamp: float | None) -> int:
        """The local position an iterator of `kind` starts at (the next record it reads)."""
        self._begin(immediate=False)
        try:
            shard = self._shard(self._require_stream(), shard_id)
            tip = shard.last_local if shard.ending_local is None else shard.ending_local
            if kind == "TRIM_HORIZON":
                return 0
            if kind == "LATEST":
                return tip + 1
            if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
                assert sequence_number is not None
                local = parse_sequence(sequence_number, shard.idx)
                return local if kind == "AT_SEQUENCE_NUMBER" else local + 1
            assert timestamp is not None
            row = self._conn.execute(
                "SELECT id FROM records WHERE id >= ? AND id < ? AND arrival >= ? ORDER BY id LIMIT 1",
                (shard.base, shard.base + (1 << LOCAL_BITS), timestamp),
            ).fetchone()
            return tip + 1 if row is None else int(row[0]) - shard.base
        finally:
            self._rollback()

    def read(self, shard_id: str, local: int, limit: int, max_bytes: int) -> ReadResult:
        """Records of `shard_id` from position `local` on, at most `limit` and `max_bytes` of data."""
        self._begin(immediate=False)
        try:
            stream_id = self._require_stream()
            shard = self._shard(stream_id, shard_id)
            base = shard.base
            head = sequence_head(shard.idx)
            # SQLite formats the sequence numbers and the rows come out in Record's field order
            rows = self._conn.execute(
                "SELECT ? || printf('%030d', id - ?), partition_key, data, arrival, 0 FROM records"
                " WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                (head, base, base | local, base + (1 << LOCAL_BITS), limit),
            ).fetchall()
            if sum([len(row[2]) + len(row[1]) for row in rows]) > max_bytes:
                rows = _within(rows, max_bytes)
            records = [_as_record(Record, row) for row in rows]
            tip = shard.last_local if shard.ending_local is None else shard.ending_local
            # An empty scan in this snapshot means nothing at or after `local` exists yet.
            last = records[-1].sequence_number if records else None
            next_local = max(local, tip + 1) if last is None else int(last[len(head) :]) + 1
            at_end = shard.ending_local is not None and next_local > shard.ending_local
            children: tuple[str, ...] = ()
            if at_end:
                children = tuple(s.shard_id for s in self._shards(stream_id) if shard_id in s.parents)
        finally:
            self._rollback()
        behind = 0
        if records and next_local <= tip:
            behind = max(0, int((time.time() - records[-1].approximate_arrival) * 1000))
        return ReadResult(tuple(records), next_local, at_end, behind, children)
