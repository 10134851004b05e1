"""Opening SQLite files that several processes share: the embedded stream and the SQLite warehouse."""

from __future__ import annotations

import sqlite3
import time


def is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLITE_BUSY/SQLITE_LOCKED: another connection holds the lock; worth waiting for."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch `conn`'s file to WAL, retrying until `timeout`.

    The switch takes a lock that SQLite's busy handler does not wait for, so two processes opening
    a new file at once would otherwise see "database is locked" straight away.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
