"""Warehouse writers behind the `Sink` protocol; `open_warehouse` picks one by URI."""

from __future__ import annotations

from processor.errors import ConfigError
from sinks.base import (
    PAGE_VIEW_COLUMNS,
    Batch,
    Checkpoint,
    DeadLetter,
    Fence,
    Lease,
    LeaseStore,
    PageView,
    QueryResult,
    Sink,
    StoredDeadLetter,
    Warehouse,
)

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
    "open_warehouse",
]


def open_warehouse(uri: str) -> Warehouse:
    """A warehouse for `sqlite:///path`, `postgresql://...` or `mysql://...`; call `start()` next."""
    if uri.startswith("sqlite:"):
        from sinks.sqlite import SqliteWarehouse

        return SqliteWarehouse.from_uri(uri)
    if uri.startswith(("postgresql:", "postgres:")):
        from sinks.postgres import PostgresWarehouse

        return PostgresWarehouse.from_uri(uri)
    if uri.startswith(("mysql:", "mariadb:")):
        from sinks.mysql import MysqlWarehouse

        return MysqlWarehouse.from_uri(uri)
    raise ConfigError(f"unknown warehouse URI {uri!r}: expected sqlite:///, postgresql:// or mysql://")
