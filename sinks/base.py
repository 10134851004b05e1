"""The `Sink` and `LeaseStore` seams: what the consumers need of a warehouse.

Exactly-once rests on one rule: a batch's rows, its dead letters and the shard's new checkpoint
commit in ONE transaction, and only while the writer still holds the shard's lease (same owner,
same lease counter, checked inside that transaction). A replay after a crash re-reads from the
committed checkpoint; a duplicate `event_id` is ignored (the primary key), and so is a dead
letter whose `key` is already filed (the unique `dedup_key`); a consumer that lost its lease
gets `LeaseLost` and nothing is written.

Backends raise only `processor.errors` types: `WarehouseUnavailable` for anything that may work
on retry (connection refused or cut, server restarting, deadlock, serialization failure),
`LeaseLost` when the fence fails, `ConfigError` for a bad URI or credentials.

Leases live in the warehouse too (`shardflow_leases`), so a backend implements both protocols.
Lease times are epoch seconds; backends with a server clock use it, so consumers on machines
with skewed clocks still agree on expiry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from processor.streams.base import ShardInfo

__all__ = [
    "PAGE_VIEW_COLUMNS",
    "Batch",
    "Checkpoint",
    "DeadLetter",
    "Fence",
    "Lease",
    "LeaseStore",
    "PageView",
    "QueryResult",
    "Sink",
    "StoredDeadLetter",
    "Warehouse",
]


class PageView(NamedTuple):
    """One row of `page_views` minus `loaded_at`, which the sink stamps at commit.

    A tuple so it pickles cheaply from the worker pool and feeds COPY/executemany as it is.
    JSON objects are carried as their JSON text.
    """

    event_id: str
    type: str
    ts: datetime | None
    received_at: datetime
    url: str | None
    referrer: str | None
    title: str | None
    user_id: str | None
    anonymous_id: str | None
    session_id: str | None
    user_agent: str | None
    ip: str | None
    name: str | None
    properties: str | None
    context: str | None
    traits: str | None
    host: str | None
    path: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    referrer_host: str | None
    browser: str | None
    os: str | None
    device: str | None
    is_bot: bool
    shard_id: str
    sequence_number: str


PAGE_VIEW_COLUMNS: tuple[str, ...] = PageView._fields


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A reject from any stage: ingest, decode, transform or load.

    Letters with the same `key` are filed once (the warehouse's `dedup_key` is unique), so a
    record delivered twice (a spool re-send, a replayed batch) leaves one row. None: no dedup.
    """

    stage: str
    reason: str
    payload: str
    shard_id: str | None = None
    sequence_number: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    id: int
    stage: str
    reason: str
    payload: str
    shard_id: str | None
    sequence_number: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a writer holds; a commit succeeds only while it is still the current one."""

    owner: str
    lease_counter: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one commit makes durable for one shard."""

    stream: str
    shard_id: str
    rows: Sequence[PageView]
    dead_letters: Sequence[DeadLetter]
    checkpoint: str | None
    """Sequence number of the last record covered, or SHARD_END; None leaves the checkpoint as
    it is (the first parts of a batch committed apart, see `RowsRejected`)."""
    fence: Fence


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stream: str
    shard_id: str
    sequence_number: str
    lease_counter: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Lease:
    stream: str
    shard_id: str
    owner: str | None
    """None when free (never taken, released, or its owner stopped cleanly)."""
    lease_counter: int
    """Incremented on every change of owner; the fencing token."""
    expires_at: float
    parent_shard_ids: tuple[str, ...]
    checkpoint: str | None
    handoff_to: str | None = None
    """A consumer that asked for this lease; the owner releases it after its next commit."""
    records_per_second: float = 0.0
    """The shard's read rate as its owner last published it with a renewal (kept across owners)."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]


@runtime_checkable
class Sink(Protocol):
    """A warehouse that loads batches exactly once."""

    async def start(self) -> None:
        """Connect and create or migrate the schema. Idempotent; raises WarehouseUnavailable."""
        ...

    async def write_batch(self, batch: Batch) -> int:
        """Commit rows, dead letters and checkpoint in one transaction, fenced by `batch.fence`.

        Returns how many rows were new (duplicates by event_id are skipped). When this returns,
        all of it is durable; on any error none of it is.
        """
        ...

    async def get_checkpoint(self, stream: str, shard_id: str) -> str | None: ...

    async def checkpoints(self, stream: str) -> list[Checkpoint]: ...

    async def list_dead_letters(
        self, *, stage: str | None = None, reason_like: str | None = None, limit: int = 1000
    ) -> list[StoredDeadLetter]: ...

    async def delete_dead_letters(self, ids: Sequence[int]) -> int: ...

    async def query(self, sql: str, *, limit: int = 10_000) -> QueryResult:
        """Run one statement in a read-only transaction; a write is refused by the database."""
        ...

    async def ping(self) -> bool:
        """True when the warehouse answers a trivial query within a short timeout."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class LeaseStore(Protocol):
    """Conditional updates on `shardflow_leases`; every change is a compare-and-set on the counter."""

    async def create_leases(self, stream: str, shards: Sequence[ShardInfo]) -> None:
        """Insert a free lease for each shard that has none (with its parents). Idempotent."""
        ...

    async def list_leases(self, stream: str) -> list[Lease]:
        """Every lease of the stream with its checkpoint."""
        ...

    async def take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None:
        """Become owner if the counter is still `expected_counter`; counter+1. None if someone won."""
        ...

    async def renew_leases(
        self,
        stream: str,
        owner: str,
        held: Mapping[str, int],
        ttl: float,
        rates: Mapping[str, float] | None = None,
    ) -> dict[str, Lease]:
        """Extend each held lease (shard -> counter) still ours; the result lacks every lost one.

        `rates` (shard -> records/s) is stored with the renewal; a shard it omits keeps its rate.
        """
        ...

    async def release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool:
        """Free a lease we hold so the next owner needs not wait for expiry."""
        ...

    async def request_handoff(self, stream: str, shard_id: str, requester: str) -> None:
        """Ask the current owner to release the lease after its next commit."""
        ...

    async def now(self) -> float:
        """The lease clock (the warehouse's, where it has one), epoch seconds."""
        ...


class Warehouse(Sink, LeaseStore, Protocol):
    """What every backend file provides."""
