"""Configuration of one consumer process; built from flags, variables and TOML by processor.config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ConsumerConfig", "InitialPosition"]

InitialPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    consumer_id: str = ""
    """host:pid:random when empty."""
    lease_timeout: float = 10.0
    """A lease not renewed for this long may be taken by another consumer."""
    renew_interval: float = 0.0
    """How often leases are renewed; 0 means lease_timeout / 3."""
    initial_position: InitialPosition = "TRIM_HORIZON"
    initial_timestamp: float | None = None
    """Epoch seconds, for AT_TIMESTAMP."""
    workers: int = 0
    """Enrichment workers; 0 means one per core beyond the first. 1 is a thread, more are processes."""
    anonymize_ip: bool = False
    batch_records: int = 10_000
    """Records asked for per GetRecords."""
    max_batches_in_flight: int = 4
    """Per shard: batches being enriched or committed at once (back-pressure beyond it)."""
    max_commit_rows: int = 10_000
    """Per shard: consecutive enriched batches are committed in one transaction up to this many rows."""
    idle_poll_interval: float = 0.2
    """Pause between empty GetRecords near the tip."""
    shard_sync_interval: float = 5.0
    """How often the shard list is re-read to find children after a reshard."""
    shutdown_timeout: float = 30.0
    """On stop, how long shards may take to commit their in-flight batches before being cancelled."""
