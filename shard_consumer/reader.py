"""One shard's reader: an iterator from the checkpoint, GetRecords, idle back-off, shard end.

The reader keeps its own position (the last sequence number it returned); an expired iterator is
recreated AFTER that sequence number, so nothing is skipped or read twice by one reader. Being
cancelled between or during reads loses nothing: what was not returned was not consumed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from processor.errors import ExpiredIterator, StreamUnavailable, Throttled
from processor.metrics import CONSUMER_MILLIS_BEHIND
from processor.streams.base import IteratorType, Record, Stream

__all__ = ["ReadBatch", "ShardReader"]

log = logging.getLogger(__name__)

_MAX_RETRY_DELAY = 5.0


@dataclass(frozen=True, slots=True)
class ReadBatch:
    records: tuple[Record, ...]
    millis_behind_latest: int
    shard_end: bool
    """True when the closed shard has been read to its end (these are its last records)."""


class ShardReader:
    """Reads one shard from `checkpoint` (exclusive) or from the initial position."""

    def __init__(
        self,
        stream: Stream,
        shard_id: str,
        *,
        checkpoint: str | None,
        initial_position: str,
        initial_timestamp: float | None = None,
        batch_records: int = 10_000,
        idle_poll_interval: float = 0.2,
        call_timeout: float = 30.0,
    ) -> None:
        self._stream = stream
        self.shard_id = shard_id
        self._last_sequence = checkpoint
        self._initial_position = IteratorType(initial_position)
        self._initial_timestamp = initial_timestamp
        self._batch_records = batch_records
        self._idle = idle_poll_interval
        self._timeout = call_timeout
        self._iterator: str | None = None
        self._ended = False
        self._behind = CONSUMER_MILLIS_BEHIND.labels(shard_id)

    @property
    def last_sequence(self) -> str | None:
        return self._last_sequence

    async def _open_iterator(self) -> str:
        if self._last_sequence is not None:
            return await self._stream.get_shard_iterator(
                self.shard_id, IteratorType.AFTER_SEQUENCE_NUMBER, sequence_number=self._last_sequence
            )
        if self._initial_position is IteratorType.AT_TIMESTAMP:
            return await self._stream.get_shard_iterator(
                self.shard_id, IteratorType.AT_TIMESTAMP, timestamp=self._initial_timestamp or 0.0
            )
        return await self._stream.get_shard_iterator(self.shard_id, self._initial_position)

    async def read(self) -> ReadBatch:
        """The next non-empty batch, or the (possibly empty) last one at shard end.

        Waits `idle_poll_interval` between empty reads near the tip; retries throttling and an
        unreachable stream with capped back-off; never raises a retriable stream error.
        """
        if self._ended:
            raise RuntimeError(f"shard {self.shard_id} already read to its end")
        delay = self._idle
        while True:
            try:
                if self._iterator is None:
                    self._iterator = await asyncio.wait_for(self._open_iterator(), self._timeout)
                result = await asyncio.wait_for(
                    self._stream.get_records(self._iterator, self._batch_records), self._timeout
                )
            except ExpiredIterator:
                self._iterator = None
                continue
            except (StreamUnavailable, Throttled, TimeoutError) as exc:
                log.warning("shard %s: GetRecords failed (%s); retrying in %.1fs", self.shard_id, exc, delay)
                self._iterator = None if isinstance(exc, TimeoutError) else self._iterator
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            delay = self._idle
            self._behind.set(result.millis_behind_latest)
            self._iterator = result.next_iterator
            if result.records:
                self._last_sequence = result.records[-1].sequence_number
            if result.next_iterator is None:
                self._ended = True
                return ReadBatch(result.records, result.millis_behind_latest, shard_end=True)
            if result.records:
                return ReadBatch(result.records, result.millis_behind_latest, shard_end=False)
            await asyncio.sleep(self._idle)
