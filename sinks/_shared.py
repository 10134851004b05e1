"""Pieces every backend shares: lease rows to `Lease`, commit metrics, and SQL fragments."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from processor import metrics
from sinks.base import PAGE_VIEW_COLUMNS, DeadLetter, Lease

__all__ = [
    "LOAD_COLUMNS",
    "lease_from_row",
    "parents_json",
    "record_commit",
]

LOAD_COLUMNS = ", ".join(PAGE_VIEW_COLUMNS)
"""Every `page_views` column the sink writes (`loaded_at` takes its default)."""


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
    )


def record_commit(started: float, new_rows: int, dead_letters: Sequence[DeadLetter]) -> None:
    """Count one committed batch in the SPEC metrics (call only after the commit succeeded)."""
    metrics.SINK_COMMIT_SECONDS.observe(time.perf_counter() - started)
    metrics.SINK_ROWS.inc(new_rows)
    for letter in dead_letters:
        metrics.DEAD_LETTERS.labels(stage=letter.stage).inc()
