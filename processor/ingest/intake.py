"""From client objects to spooled records: validate, encode, dead-letter, and admit.

A request is admitted whole or not at all: its records (events and dead letters alike) go to
the spool in one append, and the handler answers once that append is written. The handler waits
on the disk, never on the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from processor import metrics, wire
from processor.event import (
    MAX_KEY_CHARS,
    EventError,
    Limits,
    encode_dead_letter,
    encode_event,
    encode_events,
    format_ts,
    new_event_id,
    partition_key,
    validate_event,
    validate_events,
)
from processor.ingest.config import IngestConfig
from processor.ingest.errors import Problem, RequestError
from processor.spool import Spool, SpoolFull, SpoolUnwritable

__all__ = ["Batch", "Intake"]

_ACCEPTED = metrics.INGEST_EVENTS.labels("accepted")
_REJECTED = metrics.INGEST_EVENTS.labels("rejected")


@dataclass(slots=True)
class Batch:
    """The records of one request, and what to tell the client about each of its events."""

    received_at: float
    ip: str | None
    user_agent: str | None
    received_at_text: str
    records: list[tuple[str, bytes]] = field(default_factory=list)
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


class Intake:
    """Validation limits and the spool, shared by every handler."""

    def __init__(self, config: IngestConfig, spool: Spool) -> None:
        self.limits = Limits(
            max_past_seconds=config.max_past_seconds, max_future_seconds=config.max_future_seconds
        )
        self.spool = spool

    def batch(self, ip: str | None, user_agent: str | None) -> Batch:
        now = time.time()
        return Batch(now, ip, user_agent, format_ts(now))

    def add(
        self, batch: Batch, index: int, raw: object, source: bytes | None = None, text_len: int | None = None
    ) -> str | None:
        """Add one client object as an event, or as a dead letter; the error, or None if accepted.

        `source` is the dead letter's payload (else `raw` dumped); `text_len`, when known, the
        length of the JSON text `raw` was parsed from (see `validate_event`'s `source_len`).
        """
        try:
            event = validate_event(
                raw,
                received_at=batch.received_at,
                ip=batch.ip,
                user_agent=batch.user_agent,
                limits=self.limits,
                received_at_text=batch.received_at_text,
                source_len=text_len,
            )
            data = encode_event(event, self.limits)
        except EventError as exc:
            self.reject(batch, index, str(exc), source if source is not None else _dump(raw))
            return str(exc)
        key = event.get("anonymous_id") or event.get("user_id") or event["event_id"]
        batch.records.append((key if len(key) <= MAX_KEY_CHARS else partition_key(event), data))
        batch.accepted += 1
        return None

    def add_all(
        self,
        batch: Batch,
        raws: Sequence[object],
        sources: Sequence[bytes | None],
        problems: Mapping[int, str],
        text_len: int | None,
        check: Callable[[bytes, object], None] | None = None,
    ) -> None:
        """Add the objects of one request in order, checked together (`validate_events`).

        `problems` names the indexes that did not parse, with the error; `sources` and
        `text_len` are as for `add`. `check(source, raw)` raises RequestError for a structure
        the body limits refuse (depth, fields); it runs only for objects the event checks did not
        pass outright, as the event limits are within the body's (a test holds them so). The
        outcome for each index is that of `check` then `add`.
        """
        events = validate_events(
            raws,
            received_at=batch.received_at,
            ip=batch.ip,
            user_agent=batch.user_agent,
            limits=self.limits,
            received_at_text=batch.received_at_text,
            source_len=text_len,
        )
        limits = self.limits
        if None not in events:
            good = encode_events(cast(list[dict[str, Any]], events), limits)
            if good is not None:
                batch.records += good
                batch.accepted += len(good)
                return
        records = batch.records
        accepted = 0
        for index, event in enumerate(events):
            if event is None:
                source = sources[index]
                problem = problems.get(index)
                if problem is None and check is not None and source is not None:
                    try:
                        check(source, raws[index])
                    except RequestError as exc:
                        problem = exc.message
                if problem is not None:
                    self.reject(batch, index, problem, source or b"")
                else:
                    self.add(batch, index, raws[index], source, text_len)
                continue
            try:
                data = encode_event(event, limits)
            except EventError as exc:
                source = sources[index]
                self.reject(batch, index, str(exc), source if source is not None else _dump(raws[index]))
                continue
            key = event.get("anonymous_id") or event.get("user_id") or event["event_id"]
            records.append((key if len(key) <= MAX_KEY_CHARS else partition_key(event), data))
            accepted += 1
        batch.accepted += accepted

    def add_lines(self, batch: Batch, lines: Sequence[bytes]) -> bool:
        """Add NDJSON `lines` (none empty) on the fast path (`processor.wire`); False, with
        nothing added, when any of them needs the dict path (`add_all`)."""
        return self._add_fast(batch, wire.decode_lines(lines, self._context(batch)))

    def add_body(self, batch: Batch, body: bytes) -> bool:
        """Add a JSON body's event or array of events on the fast path; False as `add_lines`."""
        return self._add_fast(batch, wire.decode_body(body, self._context(batch)))

    def _context(self, batch: Batch) -> wire.Context:
        return wire.Context(
            batch.received_at, batch.received_at_text, batch.ip, batch.user_agent, self.limits
        )

    @staticmethod
    def _add_fast(batch: Batch, records: wire.Records | None) -> bool:
        if records is None:
            return False
        batch.records += records
        batch.accepted += len(records)
        return True

    def reject(self, batch: Batch, index: int, reason: str, payload: bytes) -> None:
        """Record a rejected event as a dead letter that travels the stream like any event."""
        batch.records.append((new_event_id(), encode_dead_letter("ingest", reason, payload)))
        batch.rejected.append({"index": index, "error": reason})

    async def submit(self, batch: Batch) -> None:
        """Write the batch to the spool; 503 (nothing admitted) when the spool is full or its
        write failed (disk full, I/O error)."""
        if not batch.records:
            return
        try:
            await self.spool.append(batch.records)
        except SpoolFull as exc:
            raise RequestError(Problem.FULL, f"the spool is full ({exc}); retry later") from None
        except SpoolUnwritable as exc:
            raise RequestError(
                Problem.UNAVAILABLE, f"{exc.reason}: the events were not stored; retry later"
            ) from None
        if batch.accepted:
            _ACCEPTED.inc(batch.accepted)
        if batch.rejected:
            _REJECTED.inc(len(batch.rejected))


def _dump(raw: object) -> bytes:
    try:
        return orjson.dumps(raw)
    except TypeError:
        return repr(raw).encode("utf-8", "backslashreplace")
