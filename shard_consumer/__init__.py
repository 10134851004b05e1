"""Per-shard consumers: leases, readers, the worker pool and in-order commits."""

from __future__ import annotations

from shard_consumer.config import ConsumerConfig
from shard_consumer.consumer import Consumer

__all__ = ["Consumer", "ConsumerConfig"]
