"""Ingest throughput: events/s accepted over real HTTP on loopback, beside the raw limit.

    python -m benchmarks.ingest [--quick] [--seconds S] [--rounds N]

Two servers run as processes of their own for the whole run: `shardflow ingest` (embedded
stream, default `--fsync interval`: validate, encode, spool, 202, flush to the stream) and the
raw limit, a bare aiohttp+uvloop handler that only parses the same bodies with orjson and
answers the same JSON. A load generator (`benchmarks.loadgen`, its own process) drives one of
them at a time, as fast as it answers, in interleaved rounds (A B, B A, A B); each figure is
the median of the rounds, counted after a one-second warm-up. Two figures:
`ingest_single` (one event per request) and `ingest_batch` (100-event NDJSON requests).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import RssMonitor, emit, error_line, figure, interleaved, spawn, stop_process

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


def _round(port: int, events: int, seconds: float, tag: str, connections: int) -> float:
    """Events/s one load generator got accepted, between 1 s in and the end."""
    argv = ["python", "-m", "benchmarks.loadgen", "--url", f"http://127.0.0.1:{port}/v1/events"]
    argv += ["--tag", tag, "--events", str(events), "--connections", str(connections)]
    argv += ["--duration", str(seconds + 1.0), "--every", "0.25"]
    proc = spawn(argv, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=seconds + 60)
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    progress = [p for p in lines if not p.get("final")]
    start = next(p for p in progress if p["t"] >= progress[0]["t"] + 1.0)
    end = progress[-1]
    if end["failed"]:
        print(f"{tag}: {end['failed']} events failed", file=sys.stderr)
    return float((end["accepted"] - start["accepted"]) / (end["t"] - start["t"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    with tempfile.TemporaryDirectory(prefix="shardflow-bench-ingest-") as tmp:
        ours_port, raw_port = _free_port(), _free_port()
        ours = spawn(
            ["python", "-m", "processor", "ingest", "--port", str(ours_port), "--data-dir", str(Path(tmp)),
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        raw = spawn(["python", "-c", _RAW, str(raw_port)])
        monitor = RssMonitor()
        monitor.watch("shardflow", ours.pid)
        monitor.watch("limit", raw.pid)
        monitor.start()
        try:
            _wait_ready(ours_port, ours)
            _wait_ready(raw_port, raw)
            counter = iter(range(1_000_000))
            for name, events in (("ingest_single", 1), ("ingest_batch", 100)):
                try:
                    medians = interleaved(
                        {
                            "shardflow": lambda e=events: _round(
                                ours_port, e, seconds, f"s{next(counter)}", args.connections
                            ),
                            "limit": lambda e=events: _round(
                                raw_port, e, seconds, f"r{next(counter)}", args.connections
                            ),
                        },
                        rounds=args.rounds,
                    )
                except Exception as exc:  # one figure failing must not hide the other
                    emit(error_line(name, f"{type(exc).__name__}: {exc}"))
                    continue
                extra: dict[str, Any] = {"events_per_request": events, "seconds": seconds}
                emit(figure(name, medians["shardflow"], medians["limit"], rss_mb=monitor.peaks(), **extra))
        finally:
            stop_process(ours)
            stop_process(raw)
            monitor.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
