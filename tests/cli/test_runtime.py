"""Runtime pieces of the CLI: the status line (on a real pty and as log lines), the double-signal
force, and the consume health server over real HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal

import aiohttp
import pytest

from processor import metrics
from processor.runner import _Signals
from processor.status_server import StatusServer
from processor.statusline import Snapshot, StatusLine, render, snapshot


def _snap(at: float, accepted: float, in_stream: float, loaded: float, lag: float = 0.0) -> Snapshot:
    return Snapshot(at, accepted, 0, in_stream, loaded, lag, 12, 3 * 1024 * 1024, 4)


def test_render_totals_rates_lag_buffer_spool() -> None:
    line = render(_snap(10.0, 1000, 800, 500), _snap(12.0, 5000, 4800, 2500, lag=1500))
    assert line == (
        "accepted 5,000 (2,000/s) | in stream 4,800 (2,000/s) | loaded 2,500 (1,000/s) | "
        "max lag 1,500 ms | leases 4 | buffer 12 | spool 3.0 MiB"
    )
    assert (
        render(_snap(0, 0, 0, 0), _snap(1, 0, 0, 7), ingest=False)
        == "loaded 7 (7/s) | max lag 0 ms | leases 4"
    )


def test_snapshot_reads_the_prometheus_metrics() -> None:
    before = snapshot()
    metrics.INGEST_EVENTS.labels(result="accepted").inc(3)
    metrics.PUT_RECORDS.labels(result="ok").inc(2)
    metrics.SINK_ROWS.inc(1)
    metrics.CONSUMER_MILLIS_BEHIND.labels(shard_id="test-shard").set(250)
    after = snapshot()
    assert after.accepted - before.accepted == 3
    assert after.in_stream - before.in_stream == 2
    assert after.loaded - before.loaded == 1
    assert after.max_lag_ms >= 250
    metrics.CONSUMER_MILLIS_BEHIND.remove("test-shard")


async def test_status_line_redraws_in_place_on_a_terminal() -> None:
    master, slave = os.openpty()
    out = os.fdopen(slave, "w")
    try:
        async with StatusLine(interval=0.02, out=out):
            await asyncio.sleep(0.15)
        out.flush()
        written = b""
        while not written.endswith(b"\n"):
            written += await asyncio.to_thread(os.read, master, 65536)
    finally:
        out.close()
        os.close(master)
    assert written.count(b"\r\x1b[2Kaccepted ") >= 2
    assert written.count(b"\n") == 1


async def test_status_line_is_a_log_line_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processor.status")
    piped = io.StringIO()
    async with StatusLine(interval=0.02, out=piped):
        await asyncio.sleep(0.1)
    assert piped.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "processor.status"]
    assert lines and all(line.startswith("accepted ") for line in lines)


def test_second_signal_forces() -> None:
    forced: list[bool] = []
    signals = _Signals(on_force=lambda: forced.append(True))
    signals(signal.SIGINT)
    assert signals.stop.is_set() and forced == []
    signals(signal.SIGTERM)
    assert forced == [True]


async def test_health_server_answers_ready_and_not_ready() -> None:
    reason: list[str | None] = [None]
    async with StatusServer("127.0.0.1", 0, lambda: reason[0]) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz") as r:
            assert (r.status, await r.json()) == (200, {"ready": True})
        reason[0] = "warehouse unreachable"
        async with http.get(f"{base}/readyz") as r:
            assert (r.status, await r.json()) == (503, {"ready": False, "reason": "warehouse unreachable"})
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200 and "shardflow_sink_rows_total" in await r.text()
