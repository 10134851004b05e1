"""Dead letters: list them by stage and reason, and redrive the ones that now pass.

`replay_dead_letters` re-validates each payload with the same rules as the front end, puts the
events that pass on the stream (the consumer loads them like any other) and deletes exactly
those letters; the rest stay for a later fix. Records are put before letters are deleted, so a
crash in between can only repeat a replay, and the warehouse drops the repeat by `event_id`: a
payload without one gets an id derived from the letter, the same on every replay.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from processor.event import EventError, encode_event, parse_ts, partition_key, validate_event
from processor.streams.base import MAX_PUT_BYTES, MAX_PUT_RECORDS, PutRecord, Stream
from sinks.base import Sink, StoredDeadLetter

__all__ = ["DeadLetterGroup", "ReplayReport", "dead_letter_groups", "replay_dead_letters"]

_REPLAY_NAMESPACE = uuid.UUID("5d1c0de6-7e11-4c3b-9a51-5f1a0d3ad1e7")
_PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    """One line of `shardflow dead-letters list`."""

    stage: str
    reason: str
    count: int
    first_at: datetime | None
    last_at: datetime | None


@dataclass(slots=True)
class ReplayReport:
    """What a redrive did; `kept` letters are still in the table."""

    examined: int = 0
    replayed: int = 0
    """Letters whose events are on the stream now; deleted from the table."""
    events: int = 0
    """Events put (a letter may hold an array of them)."""
    kept: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Why letters were kept: the validation error (or put failure), counted."""

    def _keep(self, why: str) -> None:
        self.kept += 1
        self.errors[why] = self.errors.get(why, 0) + 1


def _like(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (`%`, `_`) as a regular expression, for filtering groups already fetched."""
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _as_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


async def dead_letter_groups(
    warehouse: Sink, *, stage: str | None = None, reason_like: str | None = None
) -> list[DeadLetterGroup]:
    """Dead letters counted by stage and reason, biggest groups first within each stage."""
    result = await warehouse.query(
        "SELECT stage, reason, count(*), min(created_at), max(created_at) FROM shardflow_dead_letters "
        "GROUP BY stage, reason",
        limit=1_000_000,
    )
    matcher = _like(reason_like) if reason_like is not None else None
    groups = [
        DeadLetterGroup(str(s), str(r), int(str(n)), _as_time(first), _as_time(last))
        for s, r, n, first, last in result.rows
        if (stage is None or s == stage) and (matcher is None or matcher.fullmatch(str(r)))
    ]
    groups.sort(key=lambda g: (g.stage, -g.count, g.reason))
    return groups


def _events(letter: StoredDeadLetter, now: float) -> list[dict[str, Any]]:
    """The canonical events of one letter; EventError when any of them still fails."""
    try:
        raw = orjson.loads(letter.payload)
    except orjson.JSONDecodeError as exc:
        raise EventError("", f"payload is not JSON: {exc}") from None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise EventError("", "payload holds no event")
    events = []
    for index, item in enumerate(items):
        received = now
        if isinstance(item, dict):
            item = dict(item)
            if isinstance(item.get("received_at"), str | int | float):
                received = parse_ts(item.pop("received_at"), "received_at")
            if item.get("event_id") is None:
                item["event_id"] = str(uuid.uuid5(_REPLAY_NAMESPACE, f"{letter.id}/{index}/{letter.payload}"))
        events.append(validate_event(item, received_at=received))
    return events


async def _put(stream: Stream, batch: list[tuple[StoredDeadLetter, list[PutRecord]]]) -> set[int]:
    """Put the records of these letters; the ids of letters whose every record was accepted."""
    records = [r for _, recs in batch for r in recs]
    results = await stream.put_records(records)
    done: set[int] = set()
    position = 0
    for letter, recs in batch:
        outcome = results[position : position + len(recs)]
        position += len(recs)
        if all(r.ok for r in outcome):
            done.add(letter.id)
    return done


async def replay_dead_letters(
    warehouse: Sink, stream: Stream, *, stage: str | None = None, reason_like: str | None = None
) -> ReplayReport:
    """Redrive: put every letter (of `stage`, with a reason LIKE `reason_like`) that now passes
    validation on the stream and delete it; the others stay. Raises what the stream or the
    warehouse raise (retriable errors may be retried: nothing is lost, repeats are dropped)."""
    report = ReplayReport()
    skipped: set[int] = set()
    now = time.time()
    while True:
        letters = await warehouse.list_dead_letters(
            stage=stage, reason_like=reason_like, limit=len(skipped) + _PAGE
        )
        fresh = [d for d in letters if d.id not in skipped]
        if not fresh:
            return report
        pending: list[tuple[StoredDeadLetter, list[PutRecord]]] = []
        for letter in fresh:
            report.examined += 1
            try:
                events = _events(letter, now)
                records = [PutRecord(encode_event(e), partition_key(e)) for e in events]
                if len(records) > MAX_PUT_RECORDS:
                    raise EventError("", f"payload holds more than {MAX_PUT_RECORDS} events")
            except EventError as exc:
                report._keep(str(exc))
                skipped.add(letter.id)
                continue
            pending.append((letter, records))
        done = await _replay(stream, pending)
        for letter, records in pending:
            if letter.id in done:
                report.replayed += 1
                report.events += len(records)
            else:
                report._keep("the stream refused a record; try again")
                skipped.add(letter.id)
        await warehouse.delete_dead_letters(sorted(done))


async def _replay(stream: Stream, pending: Sequence[tuple[StoredDeadLetter, list[PutRecord]]]) -> set[int]:
    """Put letters in PutRecords-sized batches (a letter's records never split)."""
    done: set[int] = set()
    batch: list[tuple[StoredDeadLetter, list[PutRecord]]] = []
    count = size = 0
    for letter, records in pending:
        n = len(records)
        nbytes = sum(len(r.data) + len(r.partition_key) for r in records)
        if batch and (count + n > MAX_PUT_RECORDS or size + nbytes > MAX_PUT_BYTES):
            done |= await _put(stream, batch)
            batch, count, size = [], 0, 0
        batch.append((letter, records))
        count += n
        size += nbytes
    if batch:
        done |= await _put(stream, batch)
    return done
