"""The `shardflow` command: argparse front for the roles, stream admin, queries and status.

Every option of `processor.config.OPTIONS` is a flag on the commands it applies to, and is also
read from `SHARDFLOW_<OPTION>` and `--config FILE`. A `ShardflowError` becomes one line on stderr
and a non-zero exit status (2 for configuration errors), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from processor import __version__
from processor.config import OPTIONS, Kind, Option, Scope, Settings, effective_items, resolve
from processor.errors import ConfigError, ShardflowError
from processor.uris import mask_uri

__all__ = ["build_parser", "main"]

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

_EPILOG = """\
Every option is also read from SHARDFLOW_<OPTION> (--drain-timeout: SHARDFLOW_DRAIN_TIMEOUT) and from
the TOML file of --config (drain_timeout = "5s"); a flag beats the variable, which beats the file.
Durations: 3, 2.5, 500ms, 10s, 5m. Sizes: bytes, 512KiB, 5MiB, 1GB.
"""


def _human_size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _help(option: Option) -> str:
    default = option.default
    if option.kind is Kind.LIST:
        shown = ", ".join(str(v) for v in default) if isinstance(default, tuple) and default else "none"
    elif option.kind is Kind.BOOL:
        shown = "on" if default else "off"
    elif option.kind is Kind.SIZE and isinstance(default, int):
        shown = _human_size(default)
    elif option.kind is Kind.DURATION and isinstance(default, float):
        shown = f"{default:g}s"
    else:
        shown = str(default)
    text = option.help
    if default is not None and "(default" not in text:
        text += f" (default {shown})"
    return f"{text} [{option.env}]".replace("%", "%%")


def _add_options(parser: argparse.ArgumentParser, scope: Scope) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of options (keys as the long flags, `_` or `-`)",
    )
    group = parser.add_argument_group("options")
    for option in OPTIONS:
        if not option.scope & scope:
            continue
        flag = f"--{option.name}"
        kwargs: dict[str, Any] = {"dest": option.key, "default": argparse.SUPPRESS, "help": _help(option)}
        if option.kind is Kind.BOOL:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if option.kind is Kind.LIST:
            kwargs["action"] = "append"
        if option.kind is Kind.CHOICE:
            kwargs["metavar"] = "|".join(option.choices)
        elif option.metavar:
            kwargs["metavar"] = option.metavar
        group.add_argument(flag, **kwargs)


ALL = Scope.COMMON | Scope.INGEST | Scope.CONSUME


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each leaf sets `command` (an async function) and `port_default`."""
    parser = argparse.ArgumentParser(
        prog="shardflow",
        description="Event pipeline: HTTP ingest -> Kinesis-style stream -> per-shard consumers -> SQL "
        "warehouse, exactly once.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shardflow {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def leaf(
        parent: Any, name: str, command: Command, help: str, scope: Scope, port: int = 8080
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name,
            help=help,
            description=help,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_options(p, scope)
        p.set_defaults(command=command, port_default=port)
        return p

    leaf(
        sub,
        "run",
        cmd_run,
        "everything in one process: front end, embedded stream, consumers, warehouse",
        ALL,
    )
    leaf(sub, "ingest", cmd_ingest, "the HTTP front end only", Scope.COMMON | Scope.INGEST)
    leaf(
        sub,
        "consume",
        cmd_consume,
        "consumers only (fair share of the shard leases); /healthz, /readyz, /metrics on --port",
        Scope.COMMON | Scope.CONSUME,
        port=8081,
    )

    stream = sub.add_parser("stream", help="create, describe or reshard the stream")
    stream_sub = stream.add_subparsers(title="stream commands", metavar="ACTION", required=True)
    leaf(
        stream_sub, "create", cmd_stream_create, "create the stream with --shards N (default 4)", Scope.COMMON
    )
    leaf(
        stream_sub, "describe", cmd_stream_describe, "shards, hash ranges, parents, open/closed", Scope.COMMON
    )
    reshard = leaf(
        stream_sub,
        "reshard",
        cmd_stream_reshard,
        "scale to --shards N uniformly, or one step: --split SHARD / --merge SHARD SHARD",
        Scope.COMMON,
    )
    one_step = reshard.add_mutually_exclusive_group()
    one_step.add_argument("--split", metavar="SHARD", help="split SHARD in the middle of its hash range")
    one_step.add_argument("--merge", nargs=2, metavar="SHARD", help="merge two adjacent shards")

    query = leaf(sub, "query", cmd_query, "run a read-only SQL query on the warehouse", Scope.COMMON)
    query.add_argument("sql", metavar="SQL", help='e.g. "select count(*) from page_views"')
    query.add_argument(
        "--format", choices=("table", "tsv", "json"), default="table", help="output (default table)"
    )
    query.add_argument("--limit", type=int, default=10_000, help="at most this many rows (default 10000)")

    dead = sub.add_parser("dead-letters", help="list or replay dead letters")
    dead_sub = dead.add_subparsers(title="dead-letter commands", metavar="ACTION", required=True)
    listing = leaf(dead_sub, "list", cmd_dead_list, "dead letters by stage and reason", Scope.COMMON)
    replay = leaf(
        dead_sub,
        "replay",
        cmd_dead_replay,
        "put chosen dead letters through the pipeline again",
        Scope.COMMON,
    )
    for p in (listing, replay):
        p.add_argument("--stage", choices=("ingest", "decode", "transform", "load"), help="only this stage")
        p.add_argument("--reason-like", metavar="PATTERN", help="only reasons matching this SQL LIKE pattern")
    listing.add_argument("--limit", type=int, default=100, help="rows to show (default 100)")

    leaf(
        sub,
        "status",
        cmd_status,
        "leases, checkpoints, lag per shard, buffer and spool sizes",
        Scope.COMMON | Scope.INGEST,
    )
    leaf(sub, "config", cmd_config, "print the effective configuration (secrets masked)", ALL)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {o.key: getattr(args, o.key) for o in OPTIONS if hasattr(args, o.key)}
    return resolve(flags, config_file=args.config, port_default=args.port_default)


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _fail(message: str, code: int, err: TextIO) -> int:
    err.write(f"shardflow: error: {message}\n")
    err.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shardflow` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    err = sys.stderr
    try:
        settings = settings_from(args)
        from processor.logs import setup_logging

        setup_logging(settings.common.log_levels)
        return run_async(args.command(settings, args))
    except ConfigError as exc:
        return _fail(str(exc), 2, err)
    except ShardflowError as exc:
        return _fail(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc), 1, err)
    except KeyboardInterrupt:
        return 130


def _dump(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


def config_text(settings: Settings) -> str:
    """The effective configuration as TOML, each line commented with where its value came from."""
    lines = []
    for key, value, source in effective_items(settings):
        if value is None:
            lines.append(f"# {key} is unset  # {source}")
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif dataclasses.is_dataclass(value) or not isinstance(value, str | int | float | bool | list):
            value = str(value)
        lines.append(f"{key} = {_dump(value)}  # {source}")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], *, numeric: Sequence[bool] = ()) -> str:
    """An aligned text table with a header rule; numbers right-aligned."""
    cells = [[_cell(v).replace("\n", "\\n") for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    right = [
        (numeric[i] if i < len(numeric) else bool(rows) and all(_is_number(r[i]) for r in rows))
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or type(
        value
    ).__name__ == "Decimal"


def _tsv_cell(value: object) -> str:
    if value is None:
        return ""
    return _cell(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


async def _with_stream(settings: Settings, action: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from processor.runner import ensure_dirs, open_stream_for

    if settings.common.stream.startswith("sqlite:"):
        await asyncio.to_thread(ensure_dirs, settings)
    stream = open_stream_for(settings)
    try:
        return await action(stream)
    finally:
        await stream.close()


async def _with_warehouse(settings: Settings, action: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from processor.runner import ensure_dirs, open_warehouse_for

    if settings.common.warehouse.startswith("sqlite:"):
        await asyncio.to_thread(ensure_dirs, settings)
    warehouse = open_warehouse_for(settings)
    try:
        await warehouse.start()
        return await action(warehouse)
    finally:
        await warehouse.close()


async def _run_role(settings: Settings, role: str) -> int:
    from processor.runner import Role, Runner

    return await Runner(settings, Role(role)).run()


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    return await _run_role(settings, "run")


async def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    return await _run_role(settings, "ingest")


async def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    return await _run_role(settings, "consume")


async def cmd_stream_create(settings: Settings, args: argparse.Namespace) -> int:
    from processor.runner import ensure_stream

    async def create(stream: Any) -> int:
        open_shards, created = await ensure_stream(stream, settings.common.shards)
        verb = "created with" if created else "already exists with"
        _print(f"stream {stream.name} {verb} {open_shards} open shards")
        return 0

    return await _with_stream(settings, create)


def describe_text(description: Any) -> str:
    """`stream describe` output: a header line, then one row per shard."""
    shards = description.shards
    head = (
        f"stream {description.name}: {description.status}, {len(description.open_shards)} open of "
        f"{len(shards)} shards, retention {description.retention_hours}h"
    )
    rows = [
        (
            s.shard_id,
            "open" if s.is_open else "closed",
            str(s.starting_hash_key),
            str(s.ending_hash_key),
            ",".join(s.parent_shard_ids) or "-",
        )
        for s in shards
    ]
    columns = ("shard", "state", "starting hash key", "ending hash key", "parents")
    return head + "\n" + table(columns, rows, numeric=(False, False, True, True, False))


async def cmd_stream_describe(settings: Settings, args: argparse.Namespace) -> int:
    async def describe(stream: Any) -> int:
        _print(describe_text(await stream.describe()))
        return 0

    return await _with_stream(settings, describe)


async def cmd_stream_reshard(settings: Settings, args: argparse.Namespace) -> int:
    if args.split is None and args.merge is None and settings.sources["shards"] == "default":
        raise ConfigError("stream reshard needs --shards N, --split SHARD or --merge SHARD SHARD")

    async def reshard(stream: Any) -> int:
        if args.split is not None:
            await stream.split_shard(args.split)
        elif args.merge is not None:
            await stream.merge_shards(args.merge[0], args.merge[1])
        else:
            await stream.update_shard_count(settings.common.shards)
        _print(describe_text(await stream.describe()))
        return 0

    return await _with_stream(settings, reshard)


def format_result(columns: Sequence[str], rows: Sequence[Sequence[object]], fmt: str) -> str:
    """A query result as `table` (with a row count), `tsv` (header, then rows) or `json` (objects)."""
    if fmt == "tsv":
        lines = ["\t".join(columns), *("\t".join(_tsv_cell(v) for v in row) for row in rows)]
        return "\n".join(lines)
    if fmt == "json":
        data = [dict(zip(columns, row, strict=True)) for row in rows]
        return orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode()
    count = f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
    return table(columns, rows) + "\n" + count


async def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    async def query(warehouse: Any) -> int:
        result = await warehouse.query(args.sql, limit=args.limit)
        _print(format_result(result.columns, result.rows, args.format))
        return 0

    return await _with_warehouse(settings, query)


def _when(value: object) -> str:
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else _cell(value)


async def cmd_dead_list(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.dead_letters import dead_letter_groups

    async def listing(warehouse: Any) -> int:
        groups = await dead_letter_groups(warehouse, stage=args.stage, reason_like=args.reason_like)
        if not groups:
            _print("no dead letters")
            return 0
        summary = [(g.stage, g.reason, g.count, _when(g.first_at), _when(g.last_at)) for g in groups]
        _print(table(("stage", "reason", "count", "first", "last"), summary))
        letters = await warehouse.list_dead_letters(
            stage=args.stage, reason_like=args.reason_like, limit=args.limit
        )
        rows = [
            (d.id, d.stage, d.reason[:60], d.shard_id, _when(d.created_at), d.payload[:60]) for d in letters
        ]
        total = sum(g.count for g in groups)
        _print(f"\n{len(rows)} of {total} (--limit N for more):" if len(rows) < total else "")
        _print(table(("id", "stage", "reason", "shard", "created_at", "payload"), rows))
        return 0

    return await _with_warehouse(settings, listing)


async def cmd_dead_replay(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.dead_letters import replay_dead_letters

    async def replay(warehouse: Any) -> int:
        async def with_stream(stream: Any) -> int:
            report = await replay_dead_letters(
                warehouse, stream, stage=args.stage, reason_like=args.reason_like
            )
            _print(
                f"examined {report.examined}, replayed {report.replayed} ({report.events} events put on "
                f"{stream.name}), kept {report.kept}"
            )
            if report.errors:
                kept = sorted(report.errors.items(), key=lambda item: -item[1])
                _print(table(("kept because", "count"), kept))
            return 0

        return await _with_stream(settings, with_stream)

    return await _with_warehouse(settings, replay)


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    async def status(warehouse: Any) -> int:
        async def with_stream(stream: Any) -> int:
            _print(await status_text(settings, stream, warehouse))
            return 0

        return await _with_stream(settings, with_stream)

    return await _with_warehouse(settings, status)


async def _unread_age(stream: Any, shard_id: str, checkpoint: str | None) -> str:
    """Age of the oldest record after the checkpoint: how far the consumers are behind on the shard."""
    from processor.streams.base import SHARD_END, IteratorType

    if checkpoint == SHARD_END:
        return "done"
    try:
        if checkpoint is None:
            iterator = await stream.get_shard_iterator(shard_id, IteratorType.TRIM_HORIZON)
        else:
            iterator = await stream.get_shard_iterator(
                shard_id, IteratorType.AFTER_SEQUENCE_NUMBER, sequence_number=checkpoint
            )
        result = await stream.get_records(iterator, limit=1)
    except ShardflowError as exc:
        return f"? ({type(exc).__name__})"
    if not result.records:
        return "0"
    return f"{max(0.0, time.time() - result.records[0].approximate_arrival):.1f}s"


def _dir_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def _front_end_buffer(host: str, port: int) -> str:
    """Events in a running front end's memory buffer, from its /metrics (or why not known)."""
    import aiohttp

    url = f"http://{host}:{port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return f"unknown (no front end at {host}:{port})"
    for line in text.splitlines():
        if line.startswith("shardflow_buffer_events "):
            return f"{float(line.split()[1]):,.0f} events"
    return "unknown (no shardflow_buffer_events in /metrics)"


async def status_text(settings: Settings, stream: Any, warehouse: Any) -> str:
    """`shardflow status`: one row per shard (lease, owner, checkpoint, lag), then buffer and spool."""
    description = await stream.describe()
    leases = {lease.shard_id: lease for lease in await warehouse.list_leases(stream.name)}
    checkpoints = {c.shard_id: c.sequence_number for c in await warehouse.checkpoints(stream.name)}
    now = await warehouse.now()
    rows = []
    for shard in description.shards:
        lease = leases.get(shard.shard_id)
        checkpoint = checkpoints.get(shard.shard_id) or (lease.checkpoint if lease else None)
        if lease is None:
            owner, counter, expires = "-", "-", "-"
        else:
            owner = lease.owner or "(free)"
            counter = str(lease.lease_counter)
            left = lease.expires_at - now
            expires = "-" if lease.owner is None else f"{left:.1f}s" if left > 0 else "expired"
        rows.append(
            (
                shard.shard_id,
                "open" if shard.is_open else "closed",
                owner,
                counter,
                expires,
                checkpoint or "-",
                await _unread_age(stream, shard.shard_id, checkpoint),
            )
        )
    columns = ("shard", "state", "owner", "lease", "expires in", "checkpoint", "oldest unread")
    spool = await asyncio.to_thread(_dir_bytes, settings.ingest.spool_dir)
    buffer = await _front_end_buffer(settings.ingest.host, settings.ingest.port)
    held = sum(1 for lease in leases.values() if lease.owner)
    return "\n".join(
        [
            f"stream {description.name} ({mask_uri(settings.common.stream)}): {description.status}, "
            f"{len(description.open_shards)} open shards, {held} leases held",
            table(columns, rows, numeric=(False, False, False, True, True, True, True)),
            "",
            f"buffer  {buffer}",
            f"spool   {spool:,} bytes in {settings.ingest.spool_dir}",
        ]
    )


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    _print(config_text(settings))
    return 0
