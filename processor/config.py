"""Effective configuration: flags, `SHARDFLOW_<OPTION>` variables and a TOML file, in one place.

Every option is declared once in `OPTIONS`; the CLI turns each into a flag, and `resolve` reads
it with the precedence flag > environment > `--config` file > default. Values are parsed the
same way whatever their source (durations `3`, `2.5`, `500ms`, `10s`, `5m`; sizes `5MiB`, `1GB`,
bytes), and any bad value or unknown TOML key raises `ConfigError` naming the option and where
it came from. The result is frozen: `CommonConfig`, `IngestConfig` and `ConsumerConfig`.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from processor.errors import ConfigError
from processor.ingest.config import FsyncPolicy, IngestConfig
from processor.uris import mask_uri
from shard_consumer.config import ConsumerConfig, InitialPosition

__all__ = [
    "DEFAULT_DATA_DIR",
    "OPTIONS",
    "CommonConfig",
    "Kind",
    "Option",
    "Scope",
    "Settings",
    "effective_items",
    "parse_bool",
    "parse_duration",
    "parse_log_levels",
    "parse_size",
    "resolve",
]

DEFAULT_DATA_DIR: Final = Path("shardflow-data")
ENV_PREFIX: Final = "SHARDFLOW_"


class Kind(enum.Enum):
    STR = "str"
    INT = "int"
    DURATION = "duration"
    SIZE = "size"
    BOOL = "bool"
    CHOICE = "choice"
    LIST = "list"
    """Repeatable flag; comma-separated in a variable; an array (or one string) in TOML."""


class Scope(enum.Flag):
    """Which commands take the option as a flag (every option is valid in the TOML file)."""

    COMMON = enum.auto()
    INGEST = enum.auto()
    CONSUME = enum.auto()


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    """The flag without dashes (`drain-timeout`); the TOML key and variable use `_` instead of `-`."""
    kind: Kind
    default: object
    help: str
    scope: Scope = Scope.COMMON
    choices: tuple[str, ...] = ()
    secret: bool = False
    metavar: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        "data-dir",
        Kind.STR,
        str(DEFAULT_DATA_DIR),
        "directory for the embedded stream, warehouse and spool",
        metavar="DIR",
    ),
    Option(
        "stream",
        Kind.STR,
        None,
        "stream URI: sqlite:///path/stream.db or kinesis://NAME?region=..&endpoint=.. "
        "(default: sqlite:///<data-dir>/stream.db)",
        metavar="URI",
    ),
    Option(
        "warehouse",
        Kind.STR,
        None,
        "warehouse URI: sqlite:///path.db, postgresql://... or mysql://... "
        "(default: sqlite:///<data-dir>/warehouse.db)",
        metavar="URI",
        secret=True,
    ),
    Option(
        "shards",
        Kind.INT,
        4,
        "shards of a stream created by `stream create`, or by `run` when it finds none",
        metavar="N",
    ),
    Option(
        "log-level",
        Kind.STR,
        "info",
        "debug|info|warning|error, optionally per component: info,shard_consumer=debug,sinks=warning",
        metavar="LEVEL",
    ),
    Option("host", Kind.STR, "127.0.0.1", "address to listen on", scope=Scope.INGEST | Scope.CONSUME),
    Option(
        "port",
        Kind.INT,
        None,
        "port to listen on (default 8080; 8081 for `consume`'s health and metrics)",
        scope=Scope.INGEST | Scope.CONSUME,
    ),
    Option(
        "write-key",
        Kind.LIST,
        (),
        "accepted write key (repeatable); when set, every POST must carry one",
        scope=Scope.INGEST,
        secret=True,
        metavar="KEY",
    ),
    Option(
        "max-body",
        Kind.SIZE,
        5 * 1024 * 1024,
        "request body limit (413 beyond it)",
        scope=Scope.INGEST,
        metavar="SIZE",
    ),
    Option(
        "buffer-max-bytes",
        Kind.SIZE,
        64 * 1024 * 1024,
        "memory for events awaiting the stream",
        scope=Scope.INGEST,
        metavar="SIZE",
    ),
    Option(
        "spool-max-bytes",
        Kind.SIZE,
        1024 * 1024 * 1024,
        "disk the spool may use before answering 503",
        scope=Scope.INGEST,
        metavar="SIZE",
    ),
    Option(
        "fsync",
        Kind.CHOICE,
        "interval",
        "when the spool is fsynced",
        scope=Scope.INGEST,
        choices=("always", "interval", "never"),
    ),
    Option(
        "drain-timeout",
        Kind.DURATION,
        10.0,
        "on stop, how long to keep flushing and loading what is left",
        scope=Scope.INGEST | Scope.CONSUME,
        metavar="DURATION",
    ),
    Option(
        "trusted-proxy",
        Kind.LIST,
        (),
        "CIDR whose X-Forwarded-For is believed (repeatable)",
        scope=Scope.INGEST,
        metavar="CIDR",
    ),
    Option(
        "cors-origin",
        Kind.LIST,
        ("*",),
        "allowed CORS origin (repeatable)",
        scope=Scope.INGEST,
        metavar="ORIGIN",
    ),
    Option("aggregate", Kind.BOOL, False, "KPL aggregation on write (Kinesis only)", scope=Scope.INGEST),
    Option(
        "workers",
        Kind.INT,
        0,
        "enrichment workers (0: one per core beyond the first; 1 runs as a thread)",
        scope=Scope.CONSUME,
        metavar="N",
    ),
    Option(
        "consumer-id",
        Kind.STR,
        "",
        "this consumer's lease owner name (default host:pid:random)",
        scope=Scope.CONSUME,
        metavar="ID",
    ),
    Option(
        "lease-timeout",
        Kind.DURATION,
        10.0,
        "a lease not renewed for this long may be taken over",
        scope=Scope.CONSUME,
        metavar="DURATION",
    ),
    Option(
        "initial-position",
        Kind.CHOICE,
        "TRIM_HORIZON",
        "where a shard without checkpoint starts",
        scope=Scope.CONSUME,
        choices=("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"),
    ),
    Option(
        "initial-timestamp",
        Kind.STR,
        None,
        "for AT_TIMESTAMP: ISO-8601 time or epoch seconds",
        scope=Scope.CONSUME,
        metavar="TIME",
    ),
    Option(
        "anonymize-ip", Kind.BOOL, False, "anonymize IP addresses before they are loaded", scope=Scope.CONSUME
    ),
    Option(
        "status-interval",
        Kind.DURATION,
        None,
        "status line period (default: 1s on a terminal, 10s otherwise)",
        scope=Scope.INGEST | Scope.CONSUME,
        metavar="DURATION",
    ),
)

_BY_KEY: Final = {o.key: o for o in OPTIONS}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}  # fmt: skip


def parse_duration(value: object) -> float:
    """Seconds from `3`, `2.5`, `500ms`, `10s`, `5m`, `1h` (or a number). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use 3, 2.5, 500ms, 10s, 5m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use 3, 2.5, 500ms, 10s, 5m)")
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
    if seconds < 0:
        raise ValueError(f"{value!r} is negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `1048576`, `5MiB`, `1GB`, `512k` (k/M/G alone are binary). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (use bytes, 512KiB, 5MiB, 1GB)")
    if isinstance(value, int):
        number, unit = float(value), "b"
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size (use bytes, 512KiB, 5MiB, 1GB)")
        number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return int(number * _SIZE_UNITS[unit])


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (use true/false, 1/0, yes/no)")


def parse_log_levels(spec: str) -> dict[str, int]:
    """`info,shard_consumer=debug` -> {"": INFO, "shard_consumer": DEBUG}. ValueError on a bad level."""
    levels: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        logger, _, level = part.rpartition("=")
        if level.lower() not in _LEVELS:
            raise ValueError(f"{level!r} is not a log level ({'|'.join(_LEVELS)})")
        levels[logger.strip()] = logging.getLevelNamesMapping()[level.upper()]
    levels.setdefault("", logging.INFO)
    return levels


def _parse(option: Option, raw: object, *, from_env: bool) -> object:
    kind = option.kind
    if kind is Kind.LIST:
        if from_env:
            return tuple(p.strip() for p in str(raw).split(",") if p.strip())
        if isinstance(raw, str):
            return (raw,)
        if isinstance(raw, list | tuple) and all(isinstance(v, str) for v in raw):
            return tuple(raw)
        raise ValueError(f"{raw!r} is not a list of strings")
    if kind is Kind.DURATION:
        return parse_duration(raw)
    if kind is Kind.SIZE:
        return parse_size(raw)
    if kind is Kind.BOOL:
        return parse_bool(raw)
    if kind is Kind.INT:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError(f"{raw!r} is not an integer")
        try:
            number = int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
        if number < 0:
            raise ValueError(f"{raw!r} is negative")
        return number
    if not isinstance(raw, str):
        raise ValueError(f"{raw!r} is not a string")
    if kind is Kind.CHOICE:
        for choice in option.choices:
            if raw.lower() == choice.lower():
                return choice
        raise ValueError(f"{raw!r} is not one of {', '.join(option.choices)}")
    return raw


@dataclass(frozen=True, slots=True)
class CommonConfig:
    """What every command shares: where the stream, warehouse and data directory are."""

    stream: str
    """Stream URI."""
    warehouse: str
    """Warehouse URI; may hold a password, so print it only through `mask_uri`."""
    data_dir: Path
    shards: int = 4
    """Shards of a stream that `run` or `stream create` creates."""
    log_levels: Mapping[str, int] = field(default_factory=lambda: {"": logging.INFO})
    """Root level under "", then per logger name (`shard_consumer`, `sinks`, `processor.ingest`)."""
    status_interval: float | None = None
    """Status line period; None picks 1 s on a terminal, 10 s otherwise."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration of one command, and where each value came from."""

    common: CommonConfig
    ingest: IngestConfig
    consumer: ConsumerConfig
    values: Mapping[str, object]
    """Every option by TOML key, parsed."""
    sources: Mapping[str, str]
    """Every option by TOML key: `flag`, `env`, `file` or `default`."""


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # A [shardflow] table is accepted too, so the file can live inside a larger one.
    if set(data) == {"shardflow"} and isinstance(data["shardflow"], dict):
        data = data["shardflow"]
    normalized = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(k for k in normalized if k not in _BY_KEY)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_BY_KEY))})"
        )
    return normalized


def _timestamp(raw: str | None) -> float | None:
    if raw is None:
        return None
    from processor.event import EventError, parse_ts

    try:
        return float(raw) if re.fullmatch(r"\d+(\.\d*)?", raw) else parse_ts(raw, "initial_timestamp")
    except (EventError, ValueError) as exc:
        raise ConfigError(f"--initial-timestamp: {raw!r} is not an ISO-8601 time or epoch seconds") from exc


def resolve(
    flags: Mapping[str, object],
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    port_default: int = 8080,
) -> Settings:
    """Merge flag > environment > file > default into frozen configs. Raises ConfigError.

    `flags` holds only the options given on the command line (by TOML key, raw strings or
    lists); `config_file` falls back to `SHARDFLOW_CONFIG`.
    """
    env = os.environ if env is None else env
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    file_values = _load_toml(config_file) if config_file else {}
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        key = option.key
        if key in flags:
            raw, source, where = flags[key], "flag", f"--{option.name}"
        elif option.env in env:
            raw, source, where = env[option.env], "env", option.env
        elif key in file_values:
            raw, source, where = file_values[key], "file", f"{key} in {config_file}"
        else:
            values[key], sources[key] = option.default, "default"
            continue
        try:
            values[key] = _parse(option, raw, from_env=source == "env")
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        sources[key] = source
    try:
        log_levels = parse_log_levels(str(values["log_level"]))
    except ValueError as exc:
        raise ConfigError(f"log level: {exc}") from None
    if values["port"] is None:
        values["port"] = port_default
    if cast(int, values["port"]) > 65535:
        raise ConfigError(f"port {values['port']} is out of range (0-65535)")
    if cast(int, values["shards"]) < 1:
        raise ConfigError("shards must be at least 1")

    data_dir = Path(cast(str, values["data_dir"]))
    values["stream"] = values["stream"] or f"sqlite:///{data_dir}/stream.db"
    values["warehouse"] = values["warehouse"] or f"sqlite:///{data_dir}/warehouse.db"
    if values["initial_position"] == "AT_TIMESTAMP" and values["initial_timestamp"] is None:
        raise ConfigError("--initial-position AT_TIMESTAMP needs --initial-timestamp")

    common = CommonConfig(
        stream=cast(str, values["stream"]),
        warehouse=cast(str, values["warehouse"]),
        data_dir=data_dir,
        shards=cast(int, values["shards"]),
        log_levels=log_levels,
        status_interval=cast("float | None", values["status_interval"]),
    )
    ingest = IngestConfig(
        host=cast(str, values["host"]),
        port=cast(int, values["port"]),
        spool_dir=data_dir / "spool",
        max_body=cast(int, values["max_body"]),
        buffer_max_bytes=cast(int, values["buffer_max_bytes"]),
        spool_max_bytes=cast(int, values["spool_max_bytes"]),
        fsync=cast(FsyncPolicy, values["fsync"]),
        drain_timeout=cast(float, values["drain_timeout"]),
        write_keys=cast("tuple[str, ...]", values["write_key"]),
        trusted_proxies=cast("tuple[str, ...]", values["trusted_proxy"]),
        cors_origins=cast("tuple[str, ...]", values["cors_origin"]),
        aggregate=cast(bool, values["aggregate"]),
    )
    consumer = ConsumerConfig(
        consumer_id=cast(str, values["consumer_id"]),
        lease_timeout=cast(float, values["lease_timeout"]),
        initial_position=cast(InitialPosition, values["initial_position"]),
        initial_timestamp=_timestamp(cast("str | None", values["initial_timestamp"])),
        workers=cast(int, values["workers"]),
        anonymize_ip=cast(bool, values["anonymize_ip"]),
    )
    return Settings(common=common, ingest=ingest, consumer=consumer, values=values, sources=sources)


def _shown(option: Option, value: object) -> object:
    if not option.secret or value in (None, (), ""):
        return value
    if option.kind is Kind.LIST:
        return tuple("***" for _ in cast(Sequence[str], value))
    return mask_uri(str(value)) if "://" in str(value) else "***"


def effective_items(settings: Settings) -> list[tuple[str, object, str]]:
    """(TOML key, value with secrets masked, source) for every option, in declaration order."""
    return [(o.key, _shown(o, settings.values[o.key]), settings.sources[o.key]) for o in OPTIONS]
