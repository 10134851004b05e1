"""Per-shard consumers: leases, readers, the worker pool and in-order commits."""

from __future__ import annotations

__all__: list[str] = []
