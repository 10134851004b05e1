"""Ingest throughput: events/s accepted over real HTTP on loopback, beside the raw limit.

    python -m benchmarks.ingest [--quick] [--seconds S] [--rounds N] [--generators G] [--no-noop]

Servers run as processes of their own for the whole run: `shardflow ingest` exactly as a user
starts it (the embedded SQLite stream in the front end's own process, default `--fsync
interval`: validate, encode, spool, 202, flush to the stream), and the raw limit, a bare
aiohttp+uvloop handler that only parses the same bodies with orjson and answers the same JSON.
Load generators (`benchmarks.loadgen`, processes of their own, `--generators` of them sharing
`--connections`) send the same bodies to one server at a time, as fast as it answers, in
interleaved rounds (A B, B A, A B, ...); each figure is the median of the rounds (5, quick 3:
with one event a request the rate swings by a fifth from round to round on a shared 2-core
machine), counted after a one-second warm-up. Two figures: `ingest_single` (one event per
request) and `ingest_batch` (100-event NDJSON requests). `shardflow` is the reported figure;
for diagnosis the line also carries `shardflow_noop_stream` and `noop_stream_ratio_limit`: the
same front end with a stream that takes every put at once and keeps nothing (what the front end
costs without the embedded stream's SQLite puts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import orjson

from benchmarks.common import RssMonitor, emit, error_line, figure, interleaved, spawn, stop_process
from processor.cli import run_async
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.base import MAX_PUT_RECORDS, PutRecord, PutResult, Stream, StreamDescription

_RAW = """
import orjson, uvloop
from aiohttp import web

async def events(request):
    body = await request.read()
    n = 0
    if request.content_type == "application/x-ndjson":
        for line in body.split(b"\\n"):
            if line.strip():
                orjson.loads(line)
                n += 1
    else:
        value = orjson.loads(body)
        n = len(value) if isinstance(value, list) else 1
    return web.Response(status=202, body=orjson.dumps({"accepted": n, "rejected": []}),
                        content_type="application/json")

async def ready(request):
    return web.Response(text="ok")

app = web.Application()
app.add_routes([web.post("/v1/events", events), web.get("/readyz", ready)])
web.run_app(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), access_log=None,
            print=None, loop=uvloop.new_event_loop())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready after {timeout}s")


def _round(
    port: int, events: int, seconds: float, tag: str, connections: int, generators: int, warmup: float
) -> float:
    """Events/s the load generators together got accepted, between `warmup` s in and the end."""
    procs = []
    for g in range(generators):
        argv = ["python", "-m", "benchmarks.loadgen", "--url", f"http://127.0.0.1:{port}/v1/events"]
        argv += ["--tag", f"{tag}g{g}", "--events", str(events)]
        argv += ["--connections", str(max(1, connections // generators))]
        argv += ["--duration", str(seconds + warmup), "--every", "0.125" if seconds < 1 else "0.25"]
        procs.append(spawn(argv, stdout=subprocess.PIPE))
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        lines = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
        progress = [p for p in lines if not p.get("final")]
        start = next(p for p in progress if p["t"] >= progress[0]["t"] + warmup)
        end = progress[-1]
        if end["failed"]:
            print(f"{tag}: {end['failed']} events failed", file=sys.stderr)
        total += (end["accepted"] - start["accepted"]) / (end["t"] - start["t"])
    return total


class _NoopStream:
    """A stream that takes every put at once and keeps nothing: the front end's cost alone."""

    name = "noop"
    max_put_records = MAX_PUT_RECORDS
    put_failures_keep_key_order = True
    paces_puts = False

    async def describe(self) -> StreamDescription:
        return StreamDescription(self.name, "ACTIVE", ())

    async def put_records(self, records: Sequence[PutRecord]) -> list[PutResult]:
        return [_PUT_OK] * len(records)

    async def close(self) -> None:
        pass


_PUT_OK = PutResult("shardId-000000000000", "1")


async def _serve_noop(port: int, data_dir: Path) -> int:
    config = IngestConfig(port=port, spool_dir=data_dir / "spool")
    stream = cast(Stream, _NoopStream())
    async with FrontEnd(config, stream):
        await asyncio.Event().wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5, quick 3)")
    parser.add_argument("--connections", type=int, default=32, help="over all generators")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--no-noop", action="store_true", help="skip the no-op-stream diagnosis (--quick does)"
    )
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop is not None:
        with contextlib.suppress(KeyboardInterrupt):
            run_async(_serve_noop(args.serve_noop, args.data_dir))
        return 0
    seconds = args.seconds or (0.75 if args.quick else 2.0)
    rounds = args.rounds or (3 if args.quick else 5)
    warmup = 0.25 if args.quick else 1.0
    noop = not (args.no_noop or args.quick)
    with tempfile.TemporaryDirectory(prefix="shardflow-bench-ingest-") as tmp:
        ports = {"shardflow": _free_port(), "limit": _free_port()}
        servers = {
            "shardflow": spawn(
                ["python", "-m", "processor", "ingest", "--port", str(ports["shardflow"]),
                 "--data-dir", str(Path(tmp) / "ingest"), "--log-level", "warning"],
                stdout=subprocess.DEVNULL,
            ),
            "limit": spawn(["python", "-c", _RAW, str(ports["limit"])]),
        }  # fmt: skip
        if noop:
            ports["noop"] = _free_port()
            servers["noop"] = spawn(
                ["python", "-m", "benchmarks.ingest", "--serve-noop", str(ports["noop"]),
                 "--data-dir", str(Path(tmp) / "noop")],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        monitor = RssMonitor()
        for name, proc in servers.items():
            monitor.watch(name, proc.pid)
        monitor.start()
        try:
            for name, proc in servers.items():
                _wait_ready(ports[name], proc)
            counter = iter(range(1_000_000))
            for bench, events in (("ingest_single", 1), ("ingest_batch", 100)):

                def contender(name: str, e: int = events) -> Callable[[], float]:
                    return lambda: _round(
                        ports[name],
                        e,
                        seconds,
                        f"{name[0]}{next(counter)}",
                        args.connections,
                        args.generators,
                        warmup,
                    )

                try:
                    medians = interleaved({name: contender(name) for name in servers}, rounds=rounds)
                except Exception as exc:  # one figure failing must not hide the other
                    emit(error_line(bench, f"{type(exc).__name__}: {exc}"))
                    continue
                extra: dict[str, Any] = {
                    "stream": "embedded (SQLite, in the front end's process, as `shardflow ingest` runs)",
                    "events_per_request": events,
                    "seconds": seconds,
                    "generators": args.generators,
                    "connections": args.connections,
                }
                if "noop" in medians:
                    extra["shardflow_noop_stream"] = round(medians["noop"], 1)
                    extra["noop_stream_ratio_limit"] = round(medians["noop"] / medians["limit"], 3)
                emit(figure(bench, medians["shardflow"], medians["limit"], rss_mb=monitor.peaks(), **extra))
        finally:
            for proc in servers.values():
                stop_process(proc)
            monitor.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
