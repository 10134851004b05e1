"""Logging set-up: readable lines on a terminal, JSON lines anywhere else (containers, files).

Components attach context with `extra={"consumer_id": ..., "shard_id": ...}` (or a
`LoggerAdapter`); both formats print every such field, so a log line always says which
consumer and shard it is about. Levels are set per logger name (`shard_consumer=debug`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, TextIO

import orjson

__all__ = ["HumanFormatter", "JsonFormatter", "log_context", "setup_logging"]

_CONTEXT: ContextVar[Mapping[str, object]] = ContextVar("shardflow_log_context", default=MappingProxyType({}))


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add `fields` (consumer_id, shard_id, ...) to every log record of this context.

    Tasks created inside the block copy the context, so a component's background tasks keep
    the fields for their whole life; the block's own code gets them only until it exits.
    """
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if key not in record.__dict__:
                record.__dict__[key] = value
        return True


_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "taskName"}
)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, and exc when any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class HumanFormatter(logging.Formatter):
    """`12:00:01 INFO  shard_consumer: message  shard_id=... consumer_id=...`."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _TerminalHandler(logging.StreamHandler[TextIO]):
    """Clears the line first, so a log line never lands on top of the status line being redrawn."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write("\r\x1b[2K")
        super().emit(record)


def setup_logging(
    levels: Mapping[str, int], *, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Route all logging to `stream` (stderr), JSON unless it is a terminal; idempotent."""
    out = stream or sys.stderr
    use_json = not out.isatty() if json is None else json
    handler: logging.StreamHandler[TextIO]
    handler = _TerminalHandler(out) if out.isatty() else logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else HumanFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levels.get("", logging.INFO))
    for name, level in levels.items():
        if name:
            logging.getLogger(name).setLevel(level)
    # Libraries' chatter (aiohttp access lines, botocore credentials) only when asked for.
    for noisy in ("aiohttp.access", "botocore", "aiobotocore"):
        if noisy not in levels:
            logging.getLogger(noisy).setLevel(max(logging.WARNING, levels.get("", logging.INFO)))
