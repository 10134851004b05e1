"""Pieces every backend shares: lease rows to `Lease`, commit metrics, and SQL fragments."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Self

import orjson

from processor import metrics
from processor.errors import LeaseLost, WarehouseUnavailable
from sinks.base import PAGE_VIEW_COLUMNS, Batch, DeadLetter, Lease

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "LOAD_COLUMNS",
    "AsyncWarehouse",
    "LockBusy",
    "by_stage",
    "dead_letter_params",
    "lease_from_row",
    "lease_lost",
    "parents_json",
    "record_commit",
    "shared_sql",
]

LOAD_COLUMNS = ", ".join(PAGE_VIEW_COLUMNS)
"""Every `page_views` column the sink writes (`loaded_at` takes its default)."""

DEAD_LETTER_COLUMNS = "stage, reason, payload, shard_id, sequence_number, dedup_key"
"""The `shardflow_dead_letters` columns a batch writes, in `dead_letter_params` order."""


class AsyncWarehouse(ABC):
    """`async with` and a repr that never shows a password, for every backend."""

    @abstractmethod
    def _shown(self) -> str:
        """Where the warehouse is, as a repr may show it (a URI with its password masked)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown()!r})"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LockBusy(WarehouseUnavailable):
    """A lease statement waited its lock timeout for a row another session holds.

    Take, release and hand-off requests treat it as a lost race (retried on the next cycle);
    elsewhere it is the `WarehouseUnavailable` it derives from.
    """


def lease_lost(batch: Batch) -> LeaseLost:
    return LeaseLost(
        f"lease on {batch.stream}/{batch.shard_id} is no longer "
        f"{batch.fence.owner}#{batch.fence.lease_counter}"
    )


LEASE_COLUMNS = (
    "l.stream, l.shard_id, l.owner, l.lease_counter, l.expires_at, l.parent_shard_ids, "
    "c.sequence_number, l.handoff_to, l.records_per_second"
)
"""A lease `l` with its checkpoint `c`, in `lease_from_row` order."""
_WITH_CHECKPOINT = "LEFT JOIN shardflow_checkpoints c ON c.stream = l.stream AND c.shard_id = l.shard_id"


@dataclass(frozen=True, slots=True)
class SharedSql:
    """Statements every backend runs alike, in its parameter style; parameters in the order named."""

    get_checkpoint: str
    """(stream, shard_id) -> sequence_number"""
    checkpoints: str
    """(stream,) -> stream, shard_id, sequence_number, lease_counter, updated_at"""
    leases: str
    """(stream,) -> LEASE_COLUMNS of every lease of the stream, by shard"""
    lease: str
    """(stream, shard_id) -> LEASE_COLUMNS of one lease"""
    release: str
    """(stream, shard_id, owner, lease_counter): free a lease still held as given"""
    handoff: str
    """(requester, stream, shard_id, requester): ask a live owner other than requester to let go"""


def shared_sql(style: Literal["$", "%s", "?"]) -> SharedSql:
    """The shared statements with `$1, $2, ...` (asyncpg), `%s` (aiomysql) or `?` (sqlite3)."""

    def marked(template: str) -> str:
        count = template.count("{}")
        return template.format(*(f"${i}" if style == "$" else style for i in range(1, count + 1)))

    leases = f"SELECT {LEASE_COLUMNS} FROM shardflow_leases l {_WITH_CHECKPOINT} WHERE l.stream = {{}}"
    return SharedSql(
        get_checkpoint=marked(
            "SELECT sequence_number FROM shardflow_checkpoints WHERE stream = {} AND shard_id = {}"
        ),
        checkpoints=marked(
            "SELECT stream, shard_id, sequence_number, lease_counter, updated_at "
            "FROM shardflow_checkpoints WHERE stream = {} ORDER BY shard_id"
        ),
        leases=marked(leases + " ORDER BY l.shard_id"),
        lease=marked(leases + " AND l.shard_id = {}"),
        release=marked(
            "UPDATE shardflow_leases SET owner = NULL, lease_counter = lease_counter + 1, "
            "expires_at = 0, handoff_to = NULL "
            "WHERE stream = {} AND shard_id = {} AND owner = {} AND lease_counter = {}"
        ),
        handoff=marked(
            "UPDATE shardflow_leases SET handoff_to = {} "
            "WHERE stream = {} AND shard_id = {} AND owner IS NOT NULL AND owner <> {}"
        ),
    )


def dead_letter_params(letter: DeadLetter) -> tuple[str, str, str, str | None, str | None, str | None]:
    return (
        letter.stage,
        letter.reason,
        letter.payload,
        letter.shard_id,
        letter.sequence_number,
        letter.key,
    )


def by_stage(letters: Iterable[DeadLetter]) -> dict[str, list[DeadLetter]]:
    """Letters grouped by stage, so one insert per stage tells how many of each were new."""
    groups: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault(letter.stage, []).append(letter)
    return groups


def parents_json(parent_shard_ids: Sequence[str]) -> str:
    return orjson.dumps(list(parent_shard_ids)).decode()


def lease_from_row(
    stream: str,
    shard_id: str,
    owner: str | None,
    lease_counter: int,
    expires_at: float,
    parent_shard_ids: str | None,
    checkpoint: str | None,
    handoff_to: str | None,
    records_per_second: float | None = None,
) -> Lease:
    parents = orjson.loads(parent_shard_ids) if parent_shard_ids else []
    return Lease(
        stream=stream,
        shard_id=shard_id,
        owner=owner,
        lease_counter=int(lease_counter),
        expires_at=float(expires_at),
        parent_shard_ids=tuple(str(p) for p in parents),
        checkpoint=checkpoint,
        handoff_to=handoff_to,
        records_per_second=float(records_per_second or 0.0),
    )


def record_commit(started: float, new_rows: int, new_letters: Mapping[str, int]) -> None:
    """Count one committed batch in the SPEC metrics (call only after the commit succeeded).

    `new_letters` is stage -> letters actually filed (duplicates by key are not counted).
    """
    metrics.SINK_COMMIT_SECONDS.observe(time.perf_counter() - started)
    metrics.SINK_ROWS.inc(new_rows)
    for stage, count in new_letters.items():
        if count:
            metrics.DEAD_LETTERS.labels(stage=stage).inc(count)
