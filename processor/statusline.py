"""The live status line of `shardflow run`, read from the Prometheus metrics of this process.

Components expose nothing but `processor.metrics`; this module samples those values once per
period and prints totals with per-second rates: redrawn in place on a terminal, a plain log line
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Self, TextIO

from prometheus_client.metrics import MetricWrapperBase

from processor import metrics

__all__ = ["Snapshot", "StatusLine", "render", "snapshot"]

log = logging.getLogger("processor.status")


def _values(metric: MetricWrapperBase, suffix: str = "", **labels: str) -> list[float]:
    found: list[float] = []
    for family in metric.collect():
        for sample in family.samples:
            if suffix and not sample.name.endswith(suffix):
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append(sample.value)
    return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    accepted: float
    rejected: float
    in_stream: float
    loaded: float
    max_lag_ms: float
    buffered: float
    spool_bytes: float
    leases: float


def snapshot() -> Snapshot:
    """The current totals of this process's metrics."""
    return Snapshot(
        at=time.monotonic(),
        accepted=sum(_values(metrics.INGEST_EVENTS, "_total", result="accepted")),
        rejected=sum(_values(metrics.INGEST_EVENTS, "_total", result="rejected")),
        in_stream=sum(_values(metrics.PUT_RECORDS, "_total", result="ok")),
        loaded=sum(_values(metrics.SINK_ROWS, "_total")),
        max_lag_ms=max(_values(metrics.CONSUMER_MILLIS_BEHIND), default=0.0),
        buffered=sum(_values(metrics.BUFFER_EVENTS)),
        spool_bytes=sum(_values(metrics.SPOOL_BYTES)),
        leases=sum(_values(metrics.LEASES_HELD)),
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(prev: Snapshot, cur: Snapshot, *, ingest: bool = True, consume: bool = True) -> str:
    """One line: totals and per-second rates since `prev`, max lag, buffer and spool."""
    dt = max(cur.at - prev.at, 1e-9)

    def part(label: str, now: float, before: float) -> str:
        return f"{label} {now:,.0f} ({(now - before) / dt:,.0f}/s)"

    parts: list[str] = []
    if ingest:
        parts.append(part("accepted", cur.accepted, prev.accepted))
        if cur.rejected:
            parts.append(f"rejected {cur.rejected:,.0f}")
        parts.append(part("in stream", cur.in_stream, prev.in_stream))
    if consume:
        parts.append(part("loaded", cur.loaded, prev.loaded))
        parts.append(f"max lag {cur.max_lag_ms:,.0f} ms")
        parts.append(f"leases {cur.leases:.0f}")
    if ingest:
        parts.append(f"buffer {cur.buffered:,.0f}")
        parts.append(f"spool {_size(cur.spool_bytes)}")
    return " | ".join(parts)


class StatusLine:
    """Prints `render` every `interval` seconds until stopped: in place on a TTY, else logged."""

    def __init__(
        self,
        *,
        interval: float | None = None,
        out: TextIO | None = None,
        ingest: bool = True,
        consume: bool = True,
    ) -> None:
        self._out = out or sys.stdout
        self._tty = self._out.isatty()
        self._interval = interval if interval is not None else (1.0 if self._tty else 10.0)
        self._ingest = ingest
        self._consume = consume
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None and self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="status-line")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._tty:
            self._out.write("\n")
            self._out.flush()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _print(self, line: str) -> None:
        if self._tty:
            self._out.write("\r\x1b[2K" + line)
            self._out.flush()
        else:
            log.info(line)

    async def _loop(self) -> None:
        prev = snapshot()
        while True:
            await asyncio.sleep(self._interval)
            cur = snapshot()
            self._print(render(prev, cur, ingest=self._ingest, consume=self._consume))
            prev = cur
