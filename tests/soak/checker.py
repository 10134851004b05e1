"""The checker: what the load generator was told against what the warehouse holds.

Run after the load stops and the pipeline drains. It holds the pipeline to its promise:

- every acknowledged event id is in `page_views` exactly once (none lost, none doubled);
- no event id appears that the client never sent;
- for each partition key, events sent one after another through the same front end (and sent
  once, so the stored copy is unambiguous) keep their order: a later event has a higher
  sequence number on the same shard, or sits on a child of the earlier one's shard;
- dead letters exist for exactly the inputs that were meant to be bad, each stream record
  filed once.

`Report.failures` lists every broken promise; the soak exits non-zero when it is not empty.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from processor.streams import open_stream
from processor.streams.base import SHARD_END, IteratorType

__all__ = ["ClientLog", "Report", "Warehouse", "check", "read_client_log", "read_warehouse", "unread_shards"]

_BAD_ID = re.compile(r"s\d+-bad-\d{8}")


@dataclass
class ClientLog:
    sent: dict[str, str] = field(default_factory=dict)
    """Every event id sent, with its partition key."""
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Event ids answered 202: key, fe (front end index), tries, lat (request seconds)."""
    bad: dict[str, bool] = field(default_factory=dict)
    """Bad inputs answered: id -> whether a dead letter is expected."""
    summary: dict[str, Any] = field(default_factory=dict)


def read_client_log(out: Path) -> ClientLog:
    log = ClientLog()
    for line in _lines(out / "sent.jsonl"):
        log.sent[line["id"]] = line["key"]
    for line in _lines(out / "acked.jsonl"):
        log.acked[line["id"]] = line
    for line in _lines(out / "bad.jsonl"):
        log.bad[line["id"]] = bool(line["dead_letter"]) or log.bad.get(line["id"], False)
    summary = out / "load-summary.json"
    if summary.exists():
        log.summary = orjson.loads(summary.read_bytes())
    return log


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass
class Warehouse:
    rows: list[tuple[str, str | None, str, str, float]]
    """(event_id, anonymous_id, shard_id, sequence_number, lag seconds) of every page_views row."""
    dead_letters: list[tuple[str, str, str, str | None, str | None]]
    """(stage, reason, payload, shard_id, sequence_number) of every dead letter."""
    checkpoints: dict[str, str]


_ROWS_SQL = {
    "postgresql": "SELECT event_id, anonymous_id, shard_id, sequence_number, "
    "extract(epoch FROM loaded_at - received_at)::float8 FROM page_views",
    "mysql": "SELECT event_id, anonymous_id, shard_id, sequence_number, "
    "TIMESTAMPDIFF(MICROSECOND, received_at, loaded_at) / 1e6 FROM page_views",
    "sqlite": "SELECT event_id, anonymous_id, shard_id, sequence_number, "
    "(julianday(loaded_at) - julianday(received_at)) * 86400.0 FROM page_views",
}
_DEAD_SQL = "SELECT stage, reason, payload, shard_id, sequence_number FROM shardflow_dead_letters"
_CHECKPOINTS_SQL = "SELECT shard_id, sequence_number FROM shardflow_checkpoints WHERE stream = %s"


async def read_warehouse(url: str, stream: str) -> Warehouse:
    """Everything the checker needs, read straight from the database (no shardflow code)."""
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme in ("postgresql", "postgres"):
        import asyncpg

        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = [tuple(r) for r in await conn.fetch(_ROWS_SQL["postgresql"])]
            dead = [tuple(r) for r in await conn.fetch(_DEAD_SQL)]
            cps = await conn.fetch(_CHECKPOINTS_SQL.replace("%s", "$1"), stream)
        finally:
            await conn.close()
        return Warehouse(rows, dead, {r[0]: r[1] for r in cps})
    if scheme == "mysql":
        return await asyncio.to_thread(_read_mysql, url, stream)
    return await asyncio.to_thread(_read_sqlite, url, stream)


def _read_mysql(url: str, stream: str) -> Warehouse:
    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        connect_timeout=10,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(_ROWS_SQL["mysql"])
            rows = [(r[0], r[1], r[2], r[3], float(r[4])) for r in cur.fetchall()]
            cur.execute(_DEAD_SQL)
            dead = [tuple(r) for r in cur.fetchall()]
            cur.execute(_CHECKPOINTS_SQL, (stream,))
            cps = {r[0]: r[1] for r in cur.fetchall()}
    finally:
        conn.close()
    return Warehouse(rows, dead, cps)


def _read_sqlite(url: str, stream: str) -> Warehouse:
    import sqlite3

    from processor.uris import sqlite_path

    db = sqlite3.connect(f"file:{sqlite_path(url)}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(_ROWS_SQL["sqlite"]).fetchall()
        dead = db.execute(_DEAD_SQL).fetchall()
        cps = dict(db.execute(_CHECKPOINTS_SQL.replace("%s", "?"), (stream,)).fetchall())
    finally:
        db.close()
    return Warehouse(rows, dead, cps)


async def unread_shards(stream_uri: str, checkpoints: dict[str, str]) -> list[str]:
    """Shards holding records after their committed checkpoint: the consumers are not done yet."""
    stream = open_stream(stream_uri)
    try:
        unread = []
        for shard in (await stream.describe()).shards:
            checkpoint = checkpoints.get(shard.shard_id)
            if checkpoint == SHARD_END:
                continue
            if checkpoint is None:
                iterator = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
            else:
                iterator = await stream.get_shard_iterator(
                    shard.shard_id, IteratorType.AFTER_SEQUENCE_NUMBER, sequence_number=checkpoint
                )
            result = await stream.get_records(iterator, limit=1)
            if result.records:
                unread.append(shard.shard_id)
        return unread
    finally:
        await stream.close()


def stream_name(stream_uri: str) -> str:
    """The name checkpoints are kept under (`shardflow` for an embedded stream without `?name=`)."""
    return str(open_stream(stream_uri).name)


async def shard_parents(stream_uri: str) -> dict[str, tuple[str, ...]]:
    stream = open_stream(stream_uri)
    try:
        return {s.shard_id: tuple(s.parent_shard_ids) for s in (await stream.describe()).shards}
    finally:
        await stream.close()


@dataclass
class Report:
    sent: int = 0
    acknowledged: int = 0
    loaded: int = 0
    duplicates: int = 0
    lost: int = 0
    never_sent: int = 0
    loaded_not_acked: int = 0
    order_pairs: int = 0
    order_violations: int = 0
    bad_expected: int = 0
    dead_letters: int = 0
    dead_letters_unexpected: int = 0
    dead_letters_missing: int = 0
    dead_letters_doubled: int = 0
    dead_letters_resent: int = 0
    max_lag: float = 0.0
    p99_lag: float = 0.0
    p99_ingest_latency: float = 0.0
    requests: int = 0
    unexpected_answers: int = 0
    failures: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("sent", f"{self.sent:,}"),
            ("acknowledged (202)", f"{self.acknowledged:,}"),
            ("loaded", f"{self.loaded:,}"),
            ("duplicates", f"{self.duplicates:,}"),
            ("lost", f"{self.lost:,}"),
            ("loaded, never sent", f"{self.never_sent:,}"),
            ("loaded, sent but not acknowledged", f"{self.loaded_not_acked:,}"),
            ("per-key order: pairs / violations", f"{self.order_pairs:,} / {self.order_violations:,}"),
            ("bad inputs meant for dead letters", f"{self.bad_expected:,}"),
            ("dead letters", f"{self.dead_letters:,}"),
            ("dead letters unexpected / missing / doubled", (
                f"{self.dead_letters_unexpected} / {self.dead_letters_missing} / {self.dead_letters_doubled}"
            )),
            ("dead letters re-sent by a front end", f"{self.dead_letters_resent:,}"),
            ("max lag (received -> loaded)", f"{self.max_lag:.2f} s"),
            ("p99 lag", f"{self.p99_lag:.2f} s"),
            ("p99 ingest latency (202 answers)", f"{self.p99_ingest_latency * 1000:.1f} ms"),
            ("unexpected HTTP answers", f"{self.unexpected_answers:,}"),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        lines = [f"  {name.ljust(width)}  {value}" for name, value in rows]
        verdict = "PASS" if not self.failures else "FAIL"
        return "\n".join(["summary:", *lines, f"  {'verdict'.ljust(width)}  {verdict}"])


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _number(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


def check(client: ClientLog, wh: Warehouse, parents: dict[str, tuple[str, ...]]) -> Report:
    r = Report()
    r.sent = len(client.sent)
    r.acknowledged = len(client.acked)
    counts = Counter(row[0] for row in wh.rows)
    r.loaded = len(counts)
    r.duplicates = sum(n - 1 for n in counts.values() if n > 1)
    lost = [i for i in client.acked if i not in counts]
    r.lost = len(lost)
    never = [i for i in counts if i not in client.sent]
    r.never_sent = len(never)
    r.loaded_not_acked = sum(1 for i in counts if i in client.sent and i not in client.acked)
    lags = [float(row[4]) for row in wh.rows if row[4] is not None]
    r.max_lag = max(lags, default=0.0)
    r.p99_lag = _p99(lags)
    r.p99_ingest_latency = _p99([float(a["lat"]) for a in client.acked.values()])
    r.requests = sum(client.summary.get("statuses", {}).values())
    r.unexpected_answers = int(client.summary.get("unexpected_count", 0))

    if r.lost:
        r.failures.append(f"{r.lost} acknowledged events lost")
        r.examples.append(f"lost: {sorted(lost)[:10]}")
    if r.duplicates:
        r.failures.append(f"{r.duplicates} duplicate rows")
        r.examples.append(f"doubled: {[i for i, n in counts.items() if n > 1][:10]}")
    if r.never_sent:
        r.failures.append(f"{r.never_sent} loaded events were never sent")
        r.examples.append(f"never sent: {never[:10]}")
    if r.unexpected_answers:
        r.failures.append(f"{r.unexpected_answers} unexpected HTTP answers")
        r.examples += [f"answer: {u}" for u in client.summary.get("unexpected", [])[:5]]

    _check_order(r, client, wh, parents)
    _check_dead_letters(r, client, wh)
    return r


def _descends(child: str, ancestor: str, parents: dict[str, tuple[str, ...]]) -> bool:
    todo = list(parents.get(child, ()))
    seen: set[str] = set()
    while todo:
        shard = todo.pop()
        if shard == ancestor:
            return True
        if shard not in seen:
            seen.add(shard)
            todo.extend(parents.get(shard, ()))
    return False


def _check_order(r: Report, client: ClientLog, wh: Warehouse, parents: dict[str, tuple[str, ...]]) -> None:
    stored = {row[0]: (row[2], int(row[3])) for row in wh.rows}
    by_key: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for event_id, a in client.acked.items():
        if a["tries"] == 1 and event_id in stored:
            by_key[a["key"]].append((_number(event_id), event_id, int(a["fe"])))
    bad: list[str] = []
    for events in by_key.values():
        events.sort()
        for (_, first, fe_a), (_, second, fe_b) in itertools.pairwise(events):
            if fe_a != fe_b:
                continue
            r.order_pairs += 1
            (shard_a, seq_a), (shard_b, seq_b) = stored[first], stored[second]
            ok = seq_a < seq_b if shard_a == shard_b else _descends(shard_b, shard_a, parents)
            if not ok:
                r.order_violations += 1
                bad.append(f"{first}@{shard_a}/{seq_a} then {second}@{shard_b}/{seq_b}")
    if r.order_violations:
        r.failures.append(f"{r.order_violations} per-key order violations")
        r.examples += [f"order: {b}" for b in bad[:5]]


def _check_dead_letters(r: Report, client: ClientLog, wh: Warehouse) -> None:
    expected = {i for i, dl in client.bad.items() if dl}
    r.bad_expected = len(expected)
    r.dead_letters = len(wh.dead_letters)
    by_marker: Counter[str] = Counter()
    unexpected: list[str] = []
    for stage, reason, payload, _shard, _seq in wh.dead_letters:
        markers = set(_BAD_ID.findall(payload))
        if not markers:
            unexpected.append(f"{stage}: {reason[:120]} :: {payload[:120]}")
        by_marker.update(markers)
    positions = Counter((d[3], d[4]) for d in wh.dead_letters if d[3] is not None)
    r.dead_letters_unexpected = len(unexpected)
    missing = sorted(expected - set(by_marker))
    r.dead_letters_missing = len(missing)
    r.dead_letters_doubled = sum(n - 1 for n in positions.values() if n > 1)
    r.dead_letters_resent = sum(n - 1 for n in by_marker.values() if n > 1) - r.dead_letters_doubled
    if unexpected:
        r.failures.append(f"{len(unexpected)} dead letters for inputs that were not meant to be bad")
        r.examples += [f"dead letter: {u}" for u in unexpected[:5]]
    if missing:
        r.failures.append(f"{len(missing)} bad inputs acknowledged without a dead letter")
        r.examples.append(f"missing dead letters: {missing[:10]}")
    if r.dead_letters_doubled:
        r.failures.append(f"{r.dead_letters_doubled} stream records filed twice as dead letters")
