"""The error tree: every error says whether the caller should retry.

Driver errors (botocore, asyncpg, aiomysql, sqlite3) are translated into these at the boundary of
each backend, in one place per backend, so the rest of shardflow never catches a driver exception.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CorruptSpool",
    "ExpiredIterator",
    "FatalError",
    "InvalidRequest",
    "LeaseLost",
    "RetriableError",
    "RowsRejected",
    "ShardflowError",
    "StreamNotFound",
    "StreamUnavailable",
    "Throttled",
    "WarehouseUnavailable",
]


class ShardflowError(Exception):
    """Root of every error shardflow raises on purpose."""

    retriable: bool = False


class RetriableError(ShardflowError):
    """The same call may succeed later: back off and try again."""

    retriable = True


class FatalError(ShardflowError):
    """Retrying the same call will not help: fix the cause or give up the work."""


class StreamUnavailable(RetriableError):
    """The stream could not be reached or answered with a server error."""


class Throttled(RetriableError):
    """The stream refused the call for exceeding a rate limit; slow down."""


class WarehouseUnavailable(RetriableError):
    """The warehouse could not be reached, or the connection broke mid-transaction.

    Nothing of the failed transaction was committed; retrying from the last checkpoint is safe.
    """


class ExpiredIterator(RetriableError):
    """A shard iterator is older than five minutes: get a new one from the last sequence read."""


class ConfigError(FatalError):
    """The configuration is wrong (bad URI, unknown option, missing credentials)."""


class StreamNotFound(FatalError):
    """The named stream does not exist."""


class InvalidRequest(FatalError):
    """A call broke a documented limit (too many records, record too large, bad shard id)."""


class RowsRejected(InvalidRequest):
    """The warehouse refused a value of a batch (a type, range or constraint its schema holds):
    the batch can be committed without the rows at fault, which become `load` dead letters."""


class LeaseLost(FatalError):
    """Another consumer holds this shard's lease now: roll back, drop the shard, never checkpoint."""


class CorruptSpool(FatalError):
    """A spool segment failed its checksum beyond the last complete record."""
