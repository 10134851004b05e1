"""HTTP load generator: NDJSON requests of page views against a shardflow front end, in its own process.

    python -m benchmarks.loadgen --url http://127.0.0.1:8080/v1/events --tag g0 [--rate 20000]

Each request carries `--events` events with unique `event_id`s (`<tag>-<request>-<i>`), so the
warehouse count proves exactly-once. Bodies come from one template with the request number
substituted (bytes.replace), so the generator spends its CPU on HTTP, not on building JSON.

Control on stdin, one command a line: `rate N` (events/s over all connections; 0 = as fast as
the server answers) and `stop`. Progress on stdout, one JSON object a line, every `--every`
seconds: `{"t", "requests", "accepted", "rejected", "failed", "in_flight"}`; on stop a last line
with `"final": true` and request latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import time
from typing import Any

import aiohttp
import orjson
import uvloop

_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
_MARK = b"#REQ#"


def body_template(events: int, ts_ms: int) -> bytes:
    """NDJSON of `events` page views; `#REQ#` stands for the request's unique tag."""
    lines = []
    for i in range(events):
        event = {
            "event_id": f"#REQ#-{i}",
            "type": "page",
            "ts": ts_ms,
            "url": f"https://shop.example.com/products/{i}?utm_source=newsletter&utm_medium=email"
            "&utm_campaign=spring",
            "referrer": "https://www.google.com/search?q=shoes",
            "title": f"Product {i}",
            "anonymous_id": f"anon-#REQ#-{i}",
            "session_id": "s-#REQ#",
            "user_agent": _UA,
            "properties": {"sku": f"SKU-{i:05d}", "price": 19.99, "currency": "EUR"},
        }
        lines.append(orjson.dumps(event))
    return b"\n".join(lines) + b"\n"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of request latencies, in ms."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1] * 1000, 2)}


class Generator:
    """`connections` closed-loop senders sharing one token bucket of events/s."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url: str = args.url
        self.tag: bytes = args.tag.encode()
        self.events: int = args.events
        self.connections: int = args.connections
        self.rate: float = args.rate
        self.has_duration: bool = args.duration > 0
        self.template = body_template(self.events, int(time.time() * 1000))
        self.stopping = asyncio.Event()
        self.next_request = 0
        self.requests = 0
        self.accepted = 0
        self.rejected = 0
        self.failed = 0
        self.in_flight = 0
        self.latencies: list[float] = []
        self._allowance = 0.0
        self._last = time.monotonic()
        self._tokens = asyncio.Lock()

    async def _take(self) -> None:
        """Wait until the bucket allows one more request (no wait when the rate is 0)."""
        if self.rate <= 0:
            return
        async with self._tokens:
            while not self.stopping.is_set():
                now = time.monotonic()
                self._allowance = min(
                    self._allowance + (now - self._last) * self.rate, self.rate * 0.1 + self.events
                )
                self._last = now
                if self._allowance >= self.events:
                    self._allowance -= self.events
                    return
                await asyncio.sleep((self.events - self._allowance) / self.rate)

    async def _sender(self, session: aiohttp.ClientSession) -> None:
        headers = {"Content-Type": "application/x-ndjson"}
        while not self.stopping.is_set():
            await self._take()
            if self.stopping.is_set():
                return
            n = self.next_request
            self.next_request += 1
            body = self.template.replace(_MARK, self.tag + b"-" + str(n).encode())
            self.in_flight += 1
            started = time.perf_counter()
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    if resp.status == 202:
                        answer = orjson.loads(payload)
                        self.accepted += int(answer.get("accepted", 0))
                        self.rejected += len(answer.get("rejected", ()))
                    else:
                        self.failed += self.events
                        if resp.status == 503:
                            await asyncio.sleep(float(resp.headers.get("Retry-After", "0.1") or 0.1))
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.failed += self.events
                await asyncio.sleep(0.05)
            finally:
                self.in_flight -= 1
            self.latencies.append(time.perf_counter() - started)
            self.requests += 1

    def progress(self, final: bool = False) -> dict[str, Any]:
        line: dict[str, Any] = {
            "t": time.time(),
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "failed": self.failed,
            "in_flight": self.in_flight,
        }
        if final:
            line["final"] = True
            line["latency_ms"] = percentiles(self.latencies)
        return line

    async def _control(self) -> None:
        if not stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
            return  # no control pipe (a terminal or /dev/null): run for --duration
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not self.stopping.is_set():
            line = await reader.readline()
            if not line:
                # The parent is gone (or gave no stdin): stop, unless a duration was given.
                if not self.has_duration:
                    self.stopping.set()
                return
            words = line.decode().split()
            if words[:1] == ["rate"] and len(words) == 2:
                self.rate = float(words[1])
            elif words[:1] == ["stop"]:
                self.stopping.set()
            elif words[:1] == ["reset"]:
                self.latencies.clear()

    async def _report(self, every: float) -> None:
        while not self.stopping.is_set():
            write(self.progress())
            try:
                await asyncio.wait_for(self.stopping.wait(), every)
            except TimeoutError:
                pass

    async def run(self, every: float, duration: float) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.create_task(self._sender(session)) for _ in range(self.connections)]
            tasks.append(asyncio.create_task(self._report(every)))
            tasks.append(asyncio.create_task(self._control()))
            if duration > 0:
                tasks.append(asyncio.create_task(self._stop_after(duration)))
            await self.stopping.wait()
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        write(self.progress(final=True))

    async def _stop_after(self, duration: float) -> None:
        await asyncio.sleep(duration)
        self.stopping.set()


def write(line: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", default="g0", help="unique per generator: prefixes every event_id")
    parser.add_argument("--events", type=int, default=100, help="events per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = unlimited")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between progress lines")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds; 0 = on stdin")
    args = parser.parse_args(argv)
    uvloop.run(Generator(args).run(args.every, args.duration))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
