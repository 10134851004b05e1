"""Configuration of one front end; built from flags, SHARDFLOW_* variables and TOML by processor.config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["FsyncPolicy", "IngestConfig"]

FsyncPolicy = Literal["always", "interval", "never"]


@dataclass(frozen=True, slots=True)
class IngestConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    spool_dir: Path = Path("shardflow-data/spool")
    """Append-only segments of accepted events not yet acknowledged by the stream."""
    max_body: int = 5 * 1024 * 1024
    """Request body limit in bytes (413 beyond it, without reading the rest)."""
    buffer_max_bytes: int = 64 * 1024 * 1024
    """In-memory bytes of events awaiting the stream; beyond it events wait only on disk."""
    spool_max_bytes: int = 1024 * 1024 * 1024
    """Disk bytes the spool may hold; beyond it requests get 503 with Retry-After."""
    fsync: FsyncPolicy = "interval"
    fsync_interval: float = 0.1
    drain_timeout: float = 10.0
    """On shutdown, how long to keep flushing to the stream before leaving the rest in the spool."""
    write_keys: tuple[str, ...] = ()
    """When non-empty, every POST must carry one of these (Basic-auth user, writeKey, or `k`)."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs whose X-Forwarded-For is believed."""
    cors_origins: tuple[str, ...] = ("*",)
    aggregate: bool = False
    """KPL aggregation on write (Kinesis only)."""
    max_past_seconds: float = 366 * 24 * 3600.0
    max_future_seconds: float = 24 * 3600.0
    flush_concurrency: int = 8
    """PutRecords calls in flight at once."""
    flush_linger: float = 0.01
    """Seconds a call that would not fill its batch waits for more records, as a producer's
    linger: fewer, fuller calls (and stream transactions) at a few ms of stream latency."""
    request_timeout: float = 30.0
    """Whole-request deadline, so slow clients cannot hold a connection open."""
    idle_timeout: float = 15.0
    """Seconds a connection may sit without a complete request (keep-alive idle, or headers
    trickling in slowly) before it is closed."""
    spool_segment_bytes: int = 16 * 1024 * 1024
    """Size at which the spool starts a new segment file; whole segments are deleted once acked."""
    put_timeout: float = 10.0
    """Deadline of one PutRecords call; on expiry its records are retried."""
    probe_interval: float = 2.0
    """How often the stream is asked whether it answers, when no put has said so lately."""
