"""End to end: HTTP clients -> `shardflow ingest` -> stream -> `shardflow consume` -> PostgreSQL.

    python -m benchmarks.end_to_end [--quick] [--only embedded|kinesis] [--seconds S] [--warmup S]

Prints two lines, `end_to_end` (embedded SQLite stream) and `end_to_end_kinesis` (kinesalite,
`--aggregate` on). Every part is a real process on this machine: the load generators
(`benchmarks.loadgen`, 100-event NDJSON requests), the front end, the consumers (`--consumers`
`shardflow consume` processes sharing the shards by lease, default 2) and, for the
second line, kinesalite; PostgreSQL gets a throwaway database, dropped at the end.

The figure is events LOADED per second (rows committed in `page_views`), not accepted: after a
warm-up at full speed (the generators held to the drain rate once the backlog passes twice the
controller's target, `warmup_capped_after_s`), a controller sets the generators' rate each second
to what the consumers drained plus a correction toward a backlog of `--backlog-seconds`, so the
pipeline runs saturated while the backlog (accepted - loaded) stays bounded. While the pipeline
runs, loaded is the sum of the consumers' `shardflow_sink_rows_total` (rows their commits newly
inserted, read from each one's `/metrics`): a `count(*)` of `page_views` each second scans the
whole growing table, ≈ 120 ms of PostgreSQL CPU at 400k rows, so the probe took ≈ 0.1 of a core
halfway through a full run and ≈ 0.3 at its end, from the two cores the pipeline has. The final
check counts the table.
The window opens once the controller has brought the warm-up's backlog down (at most `--settle`
seconds); the line reports the largest backlog seen in the window. After the window the
generators stop and the benchmark waits for the backlog to drain and checks that the warehouse
holds each accepted event exactly once.

`limit` is plain binary COPY (asyncpg `copy_records_to_table`) of the same rows, built by
`to_page_view` from the same events, into a table made by the same DDL in the same PostgreSQL:
the median of five rounds (quick: three), one before the pipeline starts and the rest after it
stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import uvloop

from benchmarks.common import (
    ROOT,
    RssMonitor,
    emit,
    error_line,
    figure,
    kinesalite_server,
    median,
    spawn,
    stop_process,
    throwaway_postgres,
)
from benchmarks.loadgen import body_template

TARGET_RATIO = 0.35
TARGET_EVENTS = 20_000.0
SHARDS = 4
EVENTS_PER_REQUEST = 100


@dataclass
class Settings:
    seconds: float
    warmup: float
    copy_rows: int
    copy_rounds: int
    generators: int
    connections: int
    workers: int
    consumers: int
    backlog_seconds: float
    settle: float
    drain_timeout: float


@dataclass
class Generator:
    """One load-generator process and the last progress line it printed."""

    proc: subprocess.Popen[bytes]
    last: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    reader: threading.Thread | None = None

    def follow(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                line = orjson.loads(raw)
                if line.get("final"):
                    self.final = line
                self.last = line

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()

    @property
    def accepted(self) -> int:
        return int(self.last.get("accepted", 0))

    @property
    def failed(self) -> int:
        return int(self.last.get("failed", 0))


class Pipeline:
    """The processes of one run; `close()` stops each, gracefully first."""

    def __init__(self, data_dir: Path, stream_uri: str, warehouse_uri: str, aggregate: bool) -> None:
        self.data_dir = data_dir
        self.stream_uri = stream_uri
        self.warehouse_uri = warehouse_uri
        self.aggregate = aggregate
        self.port = 0
        self.ingest: subprocess.Popen[bytes] | None = None
        self.consumers: list[subprocess.Popen[bytes]] = []
        self.consumer_ports: list[int] = []
        self._rows_seen: dict[int, int] = {}
        self.generators: list[Generator] = []
        self.exit_codes: dict[str, int] = {}

    def _log(self, name: str) -> Any:
        return open(self.data_dir / f"{name}.log", "ab")

    def _common(self) -> list[str]:
        return ["--stream", self.stream_uri, "--data-dir", str(self.data_dir), "--log-level", "warning"]

    def create_stream(self) -> None:
        argv = ["python", "-m", "processor", "stream", "create", "--shards", str(SHARDS), *self._common()]
        with self._log("stream-create") as log:
            proc = spawn(argv, stdout=log, stderr=subprocess.STDOUT)
            code = proc.wait(60)
        if code != 0:
            raise RuntimeError(f"`shardflow stream create` exited {code}: {self.tail('stream-create')}")

    def start_ingest(self, port: int) -> None:
        self.port = port
        argv = ["python", "-m", "processor", "ingest", *self._common(), "--host", "127.0.0.1"]
        argv += ["--port", str(port)]
        if self.aggregate:
            argv.append("--aggregate")
        with self._log("ingest") as log:
            self.ingest = spawn(argv, stdout=log, stderr=subprocess.STDOUT)

    def start_consume(self, workers: int) -> subprocess.Popen[bytes]:
        """One more `shardflow consume` process; the group shares the shards by lease."""
        argv = ["python", "-m", "processor", "consume", *self._common(), "--warehouse", self.warehouse_uri]
        port = _free_port()
        self.consumer_ports.append(port)
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        if workers:
            argv += ["--workers", str(workers)]
        with self._log(f"consume{len(self.consumers)}") as log:
            proc = spawn(argv, stdout=log, stderr=subprocess.STDOUT)
        self.consumers.append(proc)
        return proc

    def _processes(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        named = [("ingest", self.ingest)] if self.ingest is not None else []
        return named + [(f"consume{i}", proc) for i, proc in enumerate(self.consumers)]

    def start_generators(self, count: int, connections: int) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/events"
        for i in range(count):
            argv = ["python", "-m", "benchmarks.loadgen", "--url", url, "--tag", f"g{i}"]
            argv += ["--connections", str(connections), "--events", str(EVENTS_PER_REQUEST)]
            proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            gen = Generator(proc)
            gen.reader = threading.Thread(target=gen.follow, daemon=True)
            gen.reader.start()
            self.generators.append(gen)

    def set_rate(self, total: float) -> None:
        """Events/s over all generators; 0 lifts the limit."""
        share = total / len(self.generators) if total > 0 else 0.0
        for gen in self.generators:
            gen.send(f"rate {share:.0f}")

    @property
    def accepted(self) -> int:
        return sum(g.accepted for g in self.generators)

    async def loaded(self, session: aiohttp.ClientSession) -> int:
        """Rows the consumers' commits newly inserted, from their metrics (a consumer that does not
        answer counts what it last reported)."""
        for port in self.consumer_ports:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                for line in text.splitlines():
                    if line.startswith("shardflow_sink_rows_total "):
                        self._rows_seen[port] = int(float(line.split()[1]))
        return sum(self._rows_seen.values())

    @property
    def failed(self) -> int:
        return sum(g.failed for g in self.generators)

    def stop_generators(self) -> dict[str, Any]:
        for gen in self.generators:
            gen.send("stop")
        latencies: list[dict[str, Any]] = []
        for gen in self.generators:
            try:
                gen.proc.wait(15)
            except subprocess.TimeoutExpired:
                stop_process(gen.proc, grace=1)
            if gen.reader is not None:
                gen.reader.join(5)
            latencies.append(gen.final.get("latency_ms", {}))
        return latencies[0] if len(latencies) == 1 else {"per_generator": latencies}

    def check_alive(self) -> None:
        for name, proc in self._processes():
            if proc.poll() is not None:
                raise RuntimeError(f"`shardflow {name}` exited {proc.returncode}: {self.tail(name)}")

    def tail(self, name: str, chars: int = 600) -> str:
        try:
            text = (self.data_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:].strip()

    def close(self) -> None:
        for gen in self.generators:
            stop_process(gen.proc, grace=2)
        # Front end first (it drains into the stream), then the consumers.
        for name, proc in self._processes():
            self.exit_codes[name] = stop_process(proc, grace=20)


class Controller:
    """Sets the generators' rate each step to the drain rate plus a correction toward the target backlog.

    Feeding what the consumers drained keeps the pipeline saturated; the correction (half the gap
    per second) keeps the backlog near `backlog_seconds` of drain instead of growing without end.
    """

    def __init__(
        self, pipeline: Pipeline, session: aiohttp.ClientSession, drain: float, backlog_seconds: float
    ):
        self.pipeline = pipeline
        self.session = session
        self.drain = drain
        self.backlog_seconds = backlog_seconds
        self.started = time.monotonic()
        self.prev_t = 0.0
        self.prev_loaded = -1

    @property
    def target_backlog(self) -> float:
        return max(self.drain * self.backlog_seconds, 2_000.0)

    async def step(self) -> dict[str, float]:
        loaded, accepted = await self.pipeline.loaded(self.session), self.pipeline.accepted
        now = time.monotonic()
        if self.prev_loaded >= 0 and now > self.prev_t:
            measured = max((loaded - self.prev_loaded) / (now - self.prev_t), 0.0)
            self.drain = 0.6 * self.drain + 0.4 * measured
        self.prev_t, self.prev_loaded = now, loaded
        backlog = max(accepted - loaded, 0)
        rate = max(self.drain + (self.target_backlog - backlog) / 2.0, self.drain * 0.2, 100.0)
        self.pipeline.set_rate(rate)
        self.pipeline.check_alive()
        return {"t": round(now - self.started, 2), "accepted": accepted, "loaded": loaded, "backlog": backlog}


async def _wait_ready(port: int, pipeline: Pipeline, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    reason = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            pipeline.check_alive()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
                    reason = await resp.text()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"front end not ready after {timeout}s: {locals().get('reason', 'no answer')}"
                )
            await asyncio.sleep(0.1)


async def _loaded(conn: asyncpg.Connection) -> int:
    try:
        return int(await conn.fetchval("SELECT count(*) FROM page_views", timeout=10))
    except asyncpg.UndefinedTableError:
        return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the COPY limit --------------------------------------------------------------------------------


def limit_rows(count: int) -> list[tuple[Any, ...]]:
    """`count` page_views rows, as the consumer would build them from the load generator's events."""
    from shard_consumer.enrich import to_page_view

    template = body_template(EVENTS_PER_REQUEST, int(time.time() * 1000))
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    now = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    seq = 49_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000
    for request in range((count + EVENTS_PER_REQUEST - 1) // EVENTS_PER_REQUEST):
        body = template.replace(b"#REQ#", b"limit-" + str(request).encode())
        for raw in body.splitlines():
            event = orjson.loads(raw)
            event["ts"] = received
            event["received_at"] = received
            event["ip"] = "127.0.0.1"
            seq += 1
            row = to_page_view(event, f"shardId-{request % SHARDS:012d}", str(seq))
            rows.append((*row, now))
            if len(rows) == count:
                return rows
    return rows


async def _prepare_limit_table(conn: asyncpg.Connection) -> None:
    """The page_views DDL of the PostgreSQL sink, in a schema of its own so the sink never sees it."""
    from sinks.schema import MIGRATIONS

    await conn.execute("CREATE SCHEMA IF NOT EXISTS copy_limit")
    await conn.execute("SET search_path TO copy_limit")
    for step in MIGRATIONS["postgresql"]:
        for statement in step:
            await conn.execute(statement)
    await conn.execute("SET search_path TO public")


async def copy_round(conn: asyncpg.Connection, rows: list[tuple[Any, ...]], batch: int = 10_000) -> float:
    """Rows/s of one plain binary COPY of `rows` in batches of `batch`, one transaction each."""
    from sinks.base import PAGE_VIEW_COLUMNS

    columns = [*PAGE_VIEW_COLUMNS, "loaded_at"]
    await conn.execute("TRUNCATE copy_limit.page_views")
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        async with conn.transaction():
            await conn.copy_records_to_table(
                "page_views",
                schema_name="copy_limit",
                columns=columns,
                records=rows[i : i + batch],
                timeout=120,
            )
    return len(rows) / (time.perf_counter() - started)


# --- one run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stream(kind: str, data_dir: Path, monitor: RssMonitor) -> Iterator[str]:
    if kind == "embedded":
        yield f"sqlite:///{data_dir}/stream.db"
        return
    with kinesalite_server() as (endpoint, proc):
        monitor.watch("kinesalite", proc.pid)
        yield f"kinesis://bench?region=us-east-1&endpoint={endpoint}"


async def run_one(kind: str, settings: Settings, copy_rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    name = "end_to_end" if kind == "embedded" else "end_to_end_kinesis"
    run_started = time.monotonic()
    monitor = RssMonitor().start()
    copies: list[float] = []
    async with throwaway_postgres() as warehouse_uri:
        conn = await asyncpg.connect(warehouse_uri, timeout=10)
        try:
            await _prepare_limit_table(conn)
            copies.append(await copy_round(conn, copy_rows))
            with (
                tempfile.TemporaryDirectory(prefix="sf-e2e-") as tmp,
                _stream(kind, Path(tmp), monitor) as uri,
            ):
                pipeline = Pipeline(Path(tmp), uri, warehouse_uri, aggregate=kind == "kinesis")
                try:
                    measured = await _drive(pipeline, settings, conn, monitor)
                finally:
                    pipeline.close()
                measured["exit_codes"] = pipeline.exit_codes
                bad_exit = {k: v for k, v in pipeline.exit_codes.items() if v not in (0, -15)}
                if bad_exit:
                    measured["stderr_tail"] = {k: pipeline.tail(k, 300) for k in bad_exit}
            copies.extend([await copy_round(conn, copy_rows) for _ in range(settings.copy_rounds - 1)])
        finally:
            await conn.close()
    rss = monitor.stop()
    limit = median(copies)
    loaded = measured.pop("loaded_per_s")
    line = figure(name, loaded, limit, rss_mb=rss, **measured)
    line["limit_rounds"] = [round(c, 1) for c in copies]
    line["run_s"] = round(time.monotonic() - run_started, 1)
    line["targets"] = {"ratio_limit": TARGET_RATIO, "events_per_s": TARGET_EVENTS}
    line["meets_targets"] = bool(
        line["ratio_limit"] is not None
        and line["ratio_limit"] >= TARGET_RATIO
        and loaded >= TARGET_EVENTS
        and measured["lag_bounded"]
        and measured["exactly_once"]
    )
    return line


async def _drive(
    pipeline: Pipeline, settings: Settings, conn: asyncpg.Connection, monitor: RssMonitor
) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        return await _drive_with(pipeline, settings, conn, monitor, session)


async def _drive_with(
    pipeline: Pipeline,
    settings: Settings,
    conn: asyncpg.Connection,
    monitor: RssMonitor,
    session: aiohttp.ClientSession,
) -> dict[str, Any]:
    t0 = time.monotonic()
    pipeline.create_stream()
    port = _free_port()
    pipeline.start_ingest(port)
    assert pipeline.ingest is not None
    monitor.watch("ingest", pipeline.ingest.pid)
    await _wait_ready(port, pipeline)
    for i in range(settings.consumers):
        proc = pipeline.start_consume(settings.workers)
        monitor.watch(f"consume{i}" if settings.consumers > 1 else "consume", proc.pid)
    pipeline.start_generators(settings.generators, settings.connections)
    for i, gen in enumerate(pipeline.generators):
        monitor.watch(f"loadgen{i}" if len(pipeline.generators) > 1 else "loadgen", gen.proc.pid)

    startup_s = time.monotonic() - t0
    # Warm-up at full speed: the consumers' drain rate seeds the controller. Once the backlog
    # passes twice the controller's target, the generators offer what was drained so far: a
    # stream slower than the front end (four Kinesis shards) would otherwise pile up minutes of
    # backlog that the window inherits.
    pipeline.set_rate(0)
    start_loaded, started = await pipeline.loaded(session), time.monotonic()

    def drained(loaded: int) -> float:
        return max((loaded - start_loaded) / (time.monotonic() - started), 100.0)

    capped_after: float | None = None
    while (elapsed := time.monotonic() - started) < settings.warmup:
        await asyncio.sleep(min(0.5, settings.warmup - elapsed))
        pipeline.check_alive()
        if capped_after is not None or elapsed < 1.0:
            continue
        loaded = await pipeline.loaded(session)
        if pipeline.accepted - loaded > 2 * max(drained(loaded) * settings.backlog_seconds, 2_000.0):
            pipeline.set_rate(drained(loaded))
            capped_after = round(time.monotonic() - started, 1)
    control = Controller(pipeline, session, drained(await pipeline.loaded(session)), settings.backlog_seconds)

    # Settle: let the controller bring the warm-up's backlog down before the window opens.
    settle_started = time.monotonic()
    while time.monotonic() - settle_started < settings.settle:
        sample = await control.step()
        if sample["backlog"] <= 2 * control.target_backlog:
            break
        await asyncio.sleep(1.0)
    settle_s = time.monotonic() - settle_started

    samples: list[dict[str, float]] = []
    window_start = time.monotonic()
    loaded0, accepted0 = await pipeline.loaded(session), pipeline.accepted
    while time.monotonic() - window_start < settings.seconds:
        samples.append(await control.step())
        await asyncio.sleep(1.0)
    loaded1, accepted1, window_end = await pipeline.loaded(session), pipeline.accepted, time.monotonic()
    elapsed = window_end - window_start
    loaded_per_s = (loaded1 - loaded0) / elapsed
    accepted_per_s = (accepted1 - accepted0) / elapsed
    latency = pipeline.stop_generators()

    # Drain: every accepted event must land exactly once.
    accepted_total = pipeline.accepted
    deadline = time.monotonic() + settings.drain_timeout
    final = await _loaded(conn)
    while final < accepted_total and time.monotonic() < deadline:
        pipeline.check_alive()
        await asyncio.sleep(0.25)
        final = await _loaded(conn)
    drained_in = settings.drain_timeout - max(deadline - time.monotonic(), 0.0)
    distinct = int(await conn.fetchval("SELECT count(DISTINCT event_id) FROM page_views", timeout=60))
    max_backlog = max((s["backlog"] for s in samples), default=0)
    # Bounded lag: the backlog never grew past a few seconds of what the consumers drain.
    lag_bounded = max_backlog <= max(loaded_per_s * 5.0, 5_000.0)
    return {
        "loaded_per_s": loaded_per_s,
        "accepted_per_s": round(accepted_per_s, 1),
        "window_s": round(elapsed, 1),
        "warmup_s": settings.warmup,
        "warmup_capped_after_s": capped_after,
        "max_backlog": int(max_backlog),
        "max_backlog_s": round(max_backlog / loaded_per_s, 2) if loaded_per_s else None,
        "lag_bounded": lag_bounded,
        "accepted_total": accepted_total,
        "loaded_total": final,
        "failed_requests_events": pipeline.failed,
        "exactly_once": final == accepted_total == distinct,
        "drain_s": round(drained_in, 2),
        "startup_s": round(startup_s, 2),
        "settle_s": round(settle_s, 1),
        "latency_ms": latency,
        "shards": SHARDS,
        "generators": settings.generators,
        "connections": settings.connections,
        "consumers": settings.consumers,
        "events_per_request": EVENTS_PER_REQUEST,
    }


async def main_async(args: argparse.Namespace) -> int:
    settings = Settings(
        seconds=args.seconds if args.seconds is not None else (10.0 if args.quick else 60.0),
        warmup=args.warmup if args.warmup is not None else (1.5 if args.quick else 10.0),
        copy_rows=args.copy_rows if args.copy_rows is not None else (20_000 if args.quick else 100_000),
        copy_rounds=3 if args.quick else 5,
        generators=args.generators,
        connections=args.connections,
        workers=args.workers,
        consumers=args.consumers,
        backlog_seconds=args.backlog_seconds,
        settle=args.settle if args.settle is not None else (2.0 if args.quick else 10.0),
        drain_timeout=args.drain_timeout,
    )
    if not (ROOT / "processor" / "cli.py").exists():
        for kind in args.only:
            name = "end_to_end" if kind == "embedded" else "end_to_end_kinesis"
            emit(error_line(name, "the shardflow CLI (processor/cli.py) is not on main yet"))
        return 1
    rows = await asyncio.to_thread(limit_rows, settings.copy_rows)
    status = 0
    for kind in args.only:
        name = "end_to_end" if kind == "embedded" else "end_to_end_kinesis"
        try:
            emit(await run_one(kind, settings, rows))
        except Exception as exc:  # one failed line must not hide the other
            emit(error_line(name, f"{type(exc).__name__}: {exc}"[:2000]))
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.end_to_end", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="10 s window after a 1.5 s warm-up")
    parser.add_argument(
        "--only", action="append", choices=("embedded", "kinesis"), help="run one stream kind (repeatable)"
    )
    parser.add_argument("--seconds", type=float, help="measurement window (default 60, quick 10)")
    parser.add_argument("--warmup", type=float, help="full-speed warm-up (default 10, quick 1.5)")
    parser.add_argument("--copy-rows", type=int, help="rows per COPY round (default 100000, quick 20000)")
    parser.add_argument("--generators", type=int, default=1, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=16, help="HTTP connections per generator")
    parser.add_argument("--workers", type=int, default=0, help="consumer workers (0: CLI default)")
    parser.add_argument(
        "--consumers", type=int, default=2, help="`shardflow consume` processes sharing the shards"
    )
    parser.add_argument("--backlog-seconds", type=float, default=1.0, help="backlog the controller aims at")
    parser.add_argument("--settle", type=float, help="max s to shrink the warm-up backlog")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="wait this long for the backlog")
    args = parser.parse_args(argv)
    args.only = args.only or ["embedded", "kinesis"]
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
