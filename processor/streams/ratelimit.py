"""Client-side rate limits that keep a producer and a reader inside Kinesis's per-shard limits.

Writes: 1,000 records/s and 1 MiB/s per shard. Reads: 5 GetRecords calls/s and 2 MiB/s per
shard. The write buckets are adaptive: a `ProvisionedThroughputExceededException` halves the
shard's rate (other producers share the shard; at most one cut a second), which then climbs back
by a tenth of the limit per second while no throttle is seen, so a fleet of producers settles
near the limit instead of oscillating.

A caller cancelled while it waits (a put timed out behind the queue) gives its tokens back: it
sent nothing, and keeping its reservation would leave debt that makes every retry wait (and time
out) longer, until the front end sends almost nothing while the stream sits idle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["ReadPacer", "ShardLimits", "TokenBucket", "WriteLimiter"]


@dataclass(frozen=True, slots=True)
class ShardLimits:
    """Per-shard limits; None lifts one (for emulators that never throttle)."""

    write_records: float | None = 1000.0
    write_bytes: float | None = 1024.0 * 1024.0
    read_calls: float | None = 5.0
    read_bytes: float | None = 2.0 * 1024.0 * 1024.0
    idle_wait: float = 0.5
    """Seconds between GetRecords calls on a shard whose last call was empty at the tip."""


class TokenBucket:
    """A token bucket whose callers reserve tokens and sleep off any debt, in arrival order.

    Reserving before sleeping makes it fair among tasks without a lock: each caller waits for
    exactly the tokens queued ahead of it. A request larger than the burst is allowed (it just
    waits longer), so one big record can never wedge the bucket.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst_seconds: float = 1.0,
        recovery_per_second: float = 0.1,
        cut_interval: float = 1.0,
    ) -> None:
        self.max_rate = rate
        self.rate = rate
        self._burst = burst_seconds
        self._recovery = recovery_per_second
        self._cut_interval = cut_interval
        self._last_cut = -cut_interval
        self._tokens = rate * burst_seconds
        self._stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        self._stamp = now
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + self.max_rate * self._recovery * elapsed)
        self._tokens = min(self.rate * self._burst, self._tokens + self.rate * elapsed)

    def delay(self, amount: float) -> float:
        """Reserve `amount` tokens; the seconds to wait before using them."""
        self._refill(time.monotonic())
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self, amount: float) -> None:
        """Give back tokens reserved by a caller that gave up before using them."""
        self._refill(time.monotonic())
        self._tokens = min(self.rate * self._burst, self._tokens + amount)

    async def acquire(self, amount: float) -> None:
        await _wait_reserved(self.delay(amount), [(self, amount)])

    def throttled(self, floor: float = 0.05) -> None:
        """The service refused for rate: halve the rate (not below `floor` of the maximum).

        At most one cut per `cut_interval`: the answers of calls already in flight report the
        same overload, and cutting once for each would collapse the rate (TCP cuts once per RTT).
        """
        now = time.monotonic()
        self._refill(now)
        if now - self._last_cut < self._cut_interval:
            return
        self._last_cut = now
        self.rate = max(self.max_rate * floor, self.rate / 2)
        self._tokens = min(self._tokens, 0.0)


class WriteLimiter:
    """Per-shard record and byte buckets, keyed by the shard a record is predicted to land on."""

    def __init__(self, limits: ShardLimits) -> None:
        self._limits = limits
        self._records: dict[str, TokenBucket] = {}
        self._bytes: dict[str, TokenBucket] = {}

    def _bucket(self, table: dict[str, TokenBucket], shard_id: str, rate: float) -> TokenBucket:
        bucket = table.get(shard_id)
        if bucket is None:
            bucket = table[shard_id] = TokenBucket(rate)
        return bucket

    async def acquire(self, shard_id: str, records: int, size: int) -> None:
        """Wait until `shard_id` may take `records` records of `size` bytes in total."""
        reserved: list[tuple[TokenBucket, float]] = []
        if self._limits.write_records is not None:
            reserved.append((self._bucket(self._records, shard_id, self._limits.write_records), records))
        if self._limits.write_bytes is not None:
            reserved.append((self._bucket(self._bytes, shard_id, self._limits.write_bytes), size))
        await _wait_reserved(max([0.0, *(bucket.delay(amount) for bucket, amount in reserved)]), reserved)

    def throttled(self, shard_id: str) -> None:
        for table in (self._records, self._bytes):
            if shard_id in table:
                table[shard_id].throttled()

    def rate(self, shard_id: str) -> float | None:
        """The current record rate of `shard_id` (None when unlimited or unseen)."""
        bucket = self._records.get(shard_id)
        return bucket.rate if bucket is not None else None


class ReadPacer:
    """Spaces GetRecords calls per shard: at most `read_calls`/s and `read_bytes`/s, slower when idle."""

    def __init__(self, limits: ShardLimits) -> None:
        self._limits = limits
        self._next: dict[str, float] = {}

    async def wait(self, shard_id: str) -> None:
        delay = self._next.get(shard_id, 0.0) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def done(self, shard_id: str, size: int, *, idle: bool) -> None:
        """Record a finished call that read `size` bytes; `idle` when it was empty at the tip."""
        gap = 0.0
        if self._limits.read_calls is not None:
            gap = 1.0 / self._limits.read_calls
        if self._limits.read_bytes is not None:
            gap = max(gap, size / self._limits.read_bytes)
        if idle:
            gap = max(gap, self._limits.idle_wait)
        self._next[shard_id] = time.monotonic() + gap

    def throttled(self, shard_id: str, pause: float = 1.0) -> None:
        """GetRecords was refused for rate (other readers share the shard): pause this shard."""
        self._next[shard_id] = time.monotonic() + pause

    def forget(self, shard_id: str) -> None:
        self._next.pop(shard_id, None)


async def _wait_reserved(wait: float, reserved: list[tuple[TokenBucket, float]]) -> None:
    """Sleep off `wait` for tokens already reserved; cancelled, give them back (nothing was sent)."""
    if wait <= 0:
        return
    try:
        await asyncio.sleep(wait)
    except asyncio.CancelledError:
        for bucket, amount in reserved:
            bucket.refund(amount)
        raise
