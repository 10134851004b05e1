"""The warehouse tables (SPEC "Warehouse tables") as forward migrations, one list per dialect.

`MIGRATIONS[dialect][i]` holds the statements that take a schema from version `i` to `i + 1`;
`shardflow_schema_version` records every version applied. A release that adds a column appends
a step; a user's data is never dropped. Every statement is `IF NOT EXISTS`-safe where the
dialect allows, and each backend runs the steps under a lock (advisory lock, GET_LOCK or
`BEGIN IMMEDIATE`), so concurrent `start()` from several processes applies each step once.
"""

from __future__ import annotations

from typing import Final, Literal

from processor.event import STRING_FIELDS

__all__ = ["DIALECTS", "LATEST_VERSION", "MIGRATIONS", "VERSION_TABLE", "Dialect", "pending_steps"]

Dialect = Literal["sqlite", "postgresql", "mysql"]
DIALECTS: Final[tuple[Dialect, ...]] = ("sqlite", "postgresql", "mysql")

VERSION_TABLE: Final[dict[Dialect, str]] = {
    "sqlite": "CREATE TABLE IF NOT EXISTS shardflow_schema_version "
    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS shardflow_schema_version "
    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    "mysql": "CREATE TABLE IF NOT EXISTS shardflow_schema_version "
    "(version INT PRIMARY KEY, applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
}

_INDEXED: Final = ("ts", "user_id", "anonymous_id", "session_id")


def _page_views(types: dict[str, str], key: str, tail: str = "") -> str:
    text, json, time, boolean = types["text"], types["json"], types["time"], types["bool"]
    cols = [
        f"event_id {key} PRIMARY KEY",
        f"type {text} NOT NULL",
        f"ts {time}",
        f"received_at {time} NOT NULL",
        *(f"{c} {types.get(c, text)}" for c in STRING_FIELDS if c not in ("event_id", "type")),
        f"properties {json}",
        f"context {json}",
        f"traits {json}",
        *(
            f"{c} {text}"
            for c in (
                "host",
                "path",
                "utm_source",
                "utm_medium",
                "utm_campaign",
                "referrer_host",
                "browser",
                "os",
                "device",
            )
        ),
        f"is_bot {boolean} NOT NULL",
        f"shard_id {types['short']} NOT NULL",
        f"sequence_number {types['short']} NOT NULL",
        f"loaded_at {time} NOT NULL DEFAULT {types['now']}",
    ]
    return "CREATE TABLE IF NOT EXISTS page_views (" + ", ".join(cols) + ")" + tail


_SQLITE_V1: Final = (
    _page_views(
        {
            "text": "TEXT",
            "json": "TEXT",
            "time": "TEXT",
            "bool": "INTEGER",
            "short": "TEXT",
            "now": "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        },
        "TEXT",
    ),
    "CREATE TABLE IF NOT EXISTS shardflow_checkpoints (stream TEXT NOT NULL, shard_id TEXT NOT NULL, "
    "sequence_number TEXT NOT NULL, lease_counter INTEGER NOT NULL, updated_at TEXT NOT NULL, "
    "PRIMARY KEY (stream, shard_id))",
    "CREATE TABLE IF NOT EXISTS shardflow_leases (stream TEXT NOT NULL, shard_id TEXT NOT NULL, "
    "owner TEXT, lease_counter INTEGER NOT NULL DEFAULT 0, expires_at REAL NOT NULL DEFAULT 0, "
    "parent_shard_ids TEXT NOT NULL DEFAULT '[]', handoff_to TEXT, PRIMARY KEY (stream, shard_id))",
    "CREATE TABLE IF NOT EXISTS shardflow_dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "stage TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL, shard_id TEXT, "
    "sequence_number TEXT, created_at TEXT NOT NULL)",
    *(f"CREATE INDEX IF NOT EXISTS page_views_{c}_idx ON page_views ({c})" for c in _INDEXED),
    "CREATE INDEX IF NOT EXISTS shardflow_dead_letters_stage_idx ON shardflow_dead_letters (stage, reason)",
)

_POSTGRES_V1: Final = (
    _page_views(
        {
            "text": "text",
            "json": "jsonb",
            "time": "timestamptz",
            "bool": "boolean",
            "short": "text",
            "now": "now()",
        },
        "text",
    ),
    "CREATE TABLE IF NOT EXISTS shardflow_checkpoints (stream text NOT NULL, shard_id text NOT NULL, "
    "sequence_number text NOT NULL, lease_counter bigint NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (stream, shard_id))",
    "CREATE TABLE IF NOT EXISTS shardflow_leases (stream text NOT NULL, shard_id text NOT NULL, "
    "owner text, lease_counter bigint NOT NULL DEFAULT 0, expires_at double precision NOT NULL DEFAULT 0, "
    "parent_shard_ids text NOT NULL DEFAULT '[]', handoff_to text, PRIMARY KEY (stream, shard_id))",
    "CREATE TABLE IF NOT EXISTS shardflow_dead_letters (id bigserial PRIMARY KEY, "
    "stage text NOT NULL, reason text NOT NULL, payload text NOT NULL, shard_id text, "
    "sequence_number text, created_at timestamptz NOT NULL DEFAULT now())",
    *(f"CREATE INDEX IF NOT EXISTS page_views_{c}_idx ON page_views ({c})" for c in _INDEXED),
    "CREATE INDEX IF NOT EXISTS shardflow_dead_letters_stage_idx ON shardflow_dead_letters (stage, reason)",
)

_MYSQL_TAIL: Final = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_MYSQL_V1: Final = (
    _page_views(
        {
            "text": "TEXT",
            "json": "JSON",
            "time": "DATETIME(6)",
            "bool": "BOOLEAN",
            "short": "VARCHAR(128)",
            "now": "CURRENT_TIMESTAMP(6)",
            "user_agent": "TEXT",
            "url": "TEXT",
            "title": "TEXT",
        },
        "VARCHAR(128)",
        _MYSQL_TAIL,
    ),
    "CREATE TABLE IF NOT EXISTS shardflow_checkpoints (stream VARCHAR(255) NOT NULL, "
    "shard_id VARCHAR(128) NOT NULL, sequence_number VARCHAR(128) NOT NULL, lease_counter BIGINT NOT NULL, "
    "updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (stream, shard_id))"
    + _MYSQL_TAIL,
    "CREATE TABLE IF NOT EXISTS shardflow_leases (stream VARCHAR(255) NOT NULL, "
    "shard_id VARCHAR(128) NOT NULL, owner VARCHAR(255), lease_counter BIGINT NOT NULL DEFAULT 0, "
    "expires_at DOUBLE NOT NULL DEFAULT 0, parent_shard_ids TEXT NOT NULL, handoff_to VARCHAR(255), "
    "PRIMARY KEY (stream, shard_id))" + _MYSQL_TAIL,
    "CREATE TABLE IF NOT EXISTS shardflow_dead_letters (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "stage VARCHAR(32) NOT NULL, reason TEXT NOT NULL, payload LONGTEXT NOT NULL, "
    "shard_id VARCHAR(128), sequence_number VARCHAR(128), "
    "created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), INDEX (stage, reason(191)))" + _MYSQL_TAIL,
    "CREATE INDEX IF NOT EXISTS page_views_ts_idx ON page_views (ts)",
    *(
        f"CREATE INDEX IF NOT EXISTS page_views_{c}_idx ON page_views ({c}(191))"
        for c in ("user_id", "anonymous_id", "session_id")
    ),
)

_DEDUP_INDEX: Final = (
    "CREATE UNIQUE INDEX IF NOT EXISTS shardflow_dead_letters_dedup_key_idx "
    "ON shardflow_dead_letters (dedup_key)"
)
_DEDUP_KEY_CHARS: Final = 512
"""Long enough for `stage:shard_id:sequence_number:sub_sequence_number` at the column limits."""

# v2: dead letters idempotent. A nullable unique key (NULLs never collide, so rows filed before
# keys existed stay as they are); writers insert with ON CONFLICT DO NOTHING / INSERT IGNORE.
_SQLITE_V2: Final = ("ALTER TABLE shardflow_dead_letters ADD COLUMN dedup_key TEXT", _DEDUP_INDEX)
_POSTGRES_V2: Final = (
    "ALTER TABLE shardflow_dead_letters ADD COLUMN IF NOT EXISTS dedup_key text",
    _DEDUP_INDEX,
)
_MYSQL_V2: Final = (
    f"ALTER TABLE shardflow_dead_letters ADD COLUMN IF NOT EXISTS dedup_key VARCHAR({_DEDUP_KEY_CHARS})",
    _DEDUP_INDEX,
)

# v3: each lease carries its shard's read rate, published with renewals, for balancing by load.
_SQLITE_V3: Final = ("ALTER TABLE shardflow_leases ADD COLUMN records_per_second REAL",)
_POSTGRES_V3: Final = (
    "ALTER TABLE shardflow_leases ADD COLUMN IF NOT EXISTS records_per_second double precision",
)
_MYSQL_V3: Final = ("ALTER TABLE shardflow_leases ADD COLUMN IF NOT EXISTS records_per_second DOUBLE",)

# utf8mb4_bin is a PAD SPACE collation: "a" and "a " compare equal, so INSERT IGNORE would drop
# a distinct event whose id differs only by trailing spaces. SQLite and PostgreSQL compare exactly.
_MYSQL_V4: Final = (
    "ALTER TABLE page_views MODIFY event_id VARCHAR(128) CHARACTER SET utf8mb4 "
    "COLLATE utf8mb4_nopad_bin NOT NULL",
)

MIGRATIONS: Final[dict[Dialect, tuple[tuple[str, ...], ...]]] = {
    "sqlite": (_SQLITE_V1, _SQLITE_V2, _SQLITE_V3, ()),
    "postgresql": (_POSTGRES_V1, _POSTGRES_V2, _POSTGRES_V3, ()),
    "mysql": (_MYSQL_V1, _MYSQL_V2, _MYSQL_V3, _MYSQL_V4),
}
"""Step i takes the schema from version i to i + 1. Append, never edit a released step."""

LATEST_VERSION: Final = len(MIGRATIONS["sqlite"])


def pending_steps(dialect: Dialect, current: int) -> list[tuple[int, tuple[str, ...]]]:
    """(version reached, statements) for every step after `current`, in order."""
    steps = MIGRATIONS[dialect]
    return [(i + 1, steps[i]) for i in range(current, len(steps))]
