"""Ingest latency with a healthy and with a stalled stream: the front end must not wait on the stream.

    python -m benchmarks.ingest_latency [--quick] [--rate 10000] [--seconds S]

`shardflow ingest --aggregate` runs against kinesalite. One load generator offers a fixed rate of 100-event
NDJSON requests for `--seconds`, first with kinesalite answering, then with kinesalite frozen by
SIGSTOP (a real stall: connections stay open, nothing answers), after which it gets SIGCONT.
A short warm-up at the same rate comes first and is not counted. Prints one line,
`ingest_stalled`: `shardflow` is events/s accepted while the stream is stalled, `limit` the
same with the stream healthy (so `ratio_limit` near 1 means the stall costs nothing), and
`latency_ms` holds request latency percentiles of both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from benchmarks.common import RssMonitor, emit, error_line, figure, kinesalite_server, spawn, stop_process

NAME = "ingest_stalled"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"`shardflow ingest` exited {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"front end not ready after {timeout}s")


def _phase(port: int, rate: float, seconds: float, tag: str, monitor: RssMonitor) -> dict[str, Any]:
    """One fixed-rate load-generator run; its final progress line."""
    argv = ["python", "-m", "benchmarks.loadgen", "--url", f"http://127.0.0.1:{port}/v1/events"]
    argv += ["--tag", tag, "--rate", str(rate), "--duration", str(seconds), "--every", "60"]
    proc = spawn(argv, stdout=subprocess.PIPE)
    monitor.watch("loadgen", proc.pid)
    out, _ = proc.communicate(timeout=seconds + 40)
    final = [orjson.loads(line) for line in out.splitlines() if b'"final"' in line]
    if not final:
        raise RuntimeError(f"load generator printed no final line (exit {proc.returncode})")
    result: dict[str, Any] = final[-1]
    result["events_per_s"] = result["accepted"] / seconds
    return result


def _start_ingest(uri: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Create the stream, then start the front end on `port` (logs in `data_dir`)."""
    common = ["--stream", uri, "--data-dir", str(data_dir), "--log-level", "warning"]
    with open(data_dir / "create.log", "wb") as log:
        argv = ["python", "-m", "processor", "stream", "create", "--shards", "4", *common]
        if spawn(argv, stdout=log, stderr=subprocess.STDOUT).wait(60) != 0:
            raise RuntimeError(
                f"`shardflow stream create` failed: {(data_dir / 'create.log').read_text()[-400:]}"
            )
    with open(data_dir / "ingest.log", "wb") as log:
        argv = ["python", "-m", "processor", "ingest", *common, "--host", "127.0.0.1", "--port", str(port)]
        # Aggregation on: plain PutRecords to kinesalite tops out near 7,000 records/s, below the
        # offered rate, and the "healthy" phase would already be an overload.
        argv.append("--aggregate")
        return spawn(argv, stdout=log, stderr=subprocess.STDOUT)


async def main_async(args: argparse.Namespace) -> int:
    seconds = args.seconds or (2.5 if args.quick else 10.0)
    monitor = RssMonitor().start()
    with tempfile.TemporaryDirectory(prefix="sf-lat-") as tmp, kinesalite_server() as (endpoint, kinesalite):
        monitor.watch("kinesalite", kinesalite.pid)
        uri = f"kinesis://latency?region=us-east-1&endpoint={endpoint}"
        port = _free_port()
        ingest = _start_ingest(uri, Path(tmp), port)
        monitor.watch("ingest", ingest.pid)
        try:
            await _wait_ready(port, ingest)
            # Warm-up (connections, the flusher, first segments), not counted.
            await asyncio.to_thread(_phase, port, args.rate, min(seconds / 2, 3.0), "warmup", monitor)
            healthy = await asyncio.to_thread(_phase, port, args.rate, seconds, "healthy", monitor)
            kinesalite.send_signal(signal.SIGSTOP)
            try:
                stalled = await asyncio.to_thread(_phase, port, args.rate, seconds, "stalled", monitor)
            finally:
                kinesalite.send_signal(signal.SIGCONT)
        finally:
            stop_process(ingest, grace=15)
    rss = monitor.stop()
    emit(
        figure(
            NAME,
            stalled["events_per_s"],
            healthy["events_per_s"],
            rss_mb=rss,
            offered_per_s=args.rate,
            seconds_per_phase=seconds,
            latency_ms={"healthy": healthy["latency_ms"], "stalled": stalled["latency_ms"]},
            failed_events={"healthy": healthy["failed"], "stalled": stalled["failed"]},
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_latency")
    parser.add_argument("--quick", action="store_true", help="2.5 s per phase instead of 10")
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s offered in both phases")
    parser.add_argument("--seconds", type=float, help="length of each phase")
    args = parser.parse_args(argv)
    try:
        return uvloop.run(main_async(args))
    except Exception as exc:
        emit(error_line(NAME, f"{type(exc).__name__}: {exc}"[:2000]))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
