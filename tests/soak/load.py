"""The load generator: a process of its own that sends events with known ids at a steady rate.

    python -m tests.soak.load --url URL --url URL --rate 300 --seconds 180 --out DIR [--seed N]

Each partition key (`anonymous_id`) has a home front end, and a key is never in two requests
at once, so the order of its events is the order they were sent. A request that fails (refused
connection, timeout, 503) is sent again, unchanged (same event ids), to the other front end:
that is a producer retry the pipeline must deduplicate. Every event id is written to
`sent.jsonl` before its first attempt, and to `acked.jsonl` once a front end answered 202 for
it. Some requests carry deliberately bad input, each marked with an id containing `-bad-`:
those meant to become dead letters go to `bad.jsonl` with `"dead_letter": true`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

KEYS = 240
MAX_IN_FLIGHT = 96
RETRY_FOR = 45.0
"""Seconds a request keeps being retried before it counts as not acknowledged."""


@dataclass
class Request:
    home: int
    body: bytes
    content_type: str
    events: list[tuple[str, str]]
    """(event id, key) of the good events, in body order."""
    bad_index: int | None = None
    """Index of the bad event in the body, when there is one meant to be dead-lettered."""
    bad_id: str | None = None
    kind: str = "events"


@dataclass
class Logs:
    out: Path
    sent: list[bytes] = field(default_factory=list)
    acked: list[bytes] = field(default_factory=list)
    bad: list[bytes] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def take(self) -> dict[str, list[bytes]]:
        """The lines logged so far, handed over (call on the loop; write them with `write`)."""
        taken = {"sent": self.sent, "acked": self.acked, "bad": self.bad}
        self.sent, self.acked, self.bad = [], [], []
        return taken

    def write(self, taken: dict[str, list[bytes]]) -> None:
        for name, lines in taken.items():
            if lines:
                with open(self.out / f"{name}.jsonl", "ab") as f:
                    f.write(b"".join(lines))


class Generator:
    def __init__(self, urls: list[str], rate: float, seconds: float, seed: int, out: Path) -> None:
        self.urls = urls
        self.rate = rate
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.logs = Logs(out)
        self.tag = f"s{seed}"
        self.n = 0
        self.busy: set[str] = set()
        self.keys = [
            [f"{self.tag}-k{i}" for i in range(KEYS) if i % len(urls) == h] for h in range(len(urls))
        ]
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._stopping = False

    def _next_id(self, bad: bool = False) -> str:
        self.n += 1
        return f"{self.tag}-{'bad-' if bad else ''}{self.n:08d}"

    def _event(self, key: str) -> tuple[dict[str, Any], str]:
        event_id = self._next_id()
        event = {
            "event_id": event_id,
            "anonymous_id": key,
            "url": f"https://shop.example/p/{self.n % 5000}?utm_source=soak",
            "properties": {"n": self.n},
        }
        self.logs.sent.append(orjson.dumps({"id": event_id, "key": key}) + b"\n")
        return event, event_id

    def make_request(self, size: int) -> Request | None:
        home = self.rng.randrange(len(self.urls))
        idle = [k for k in self.keys[home] if k not in self.busy]
        if not idle:
            return None
        keys = self.rng.sample(idle, min(size, len(idle)))
        # Several events of one key in one request are in order too.
        keys += self.rng.sample(keys, min(len(keys) // 4, len(keys)))
        events = [self._event(k) for k in keys]
        ids = [(e[1], e[0]["anonymous_id"]) for e in events]
        roll = self.rng.random()
        if roll < 0.02:
            bad_id = self._next_id(bad=True)
            bad = {"event_id": bad_id, "url": 12345, "title": "soak bad input"}
            at = self.rng.randrange(len(events) + 1)
            body = [e[0] for e in events]
            body.insert(at, bad)
            req = Request(home, orjson.dumps(body), "application/json", ids, at, bad_id, "bad-array")
        elif roll < 0.04:
            bad_id = self._next_id(bad=True)
            lines = [orjson.dumps(e[0]) for e in events]
            at = self.rng.randrange(len(lines) + 1)
            lines.insert(at, b'{"event_id": "' + bad_id.encode() + b'", "url": ')
            body_bytes = b"\n".join(lines) + b"\n"
            req = Request(home, body_bytes, "application/x-ndjson", ids, at, bad_id, "bad-ndjson")
        elif roll < 0.05:
            bad_id = self._next_id(bad=True)
            req = Request(
                home, b"not json " + bad_id.encode(), "application/json", [], None, bad_id, "not-json"
            )
        elif roll < 0.06:
            req = Request(
                home, orjson.dumps([e[0] for e in events]), "application/xml", [], kind="wrong-type"
            )
            ids.clear()
        else:
            req = Request(home, orjson.dumps([e[0] for e in events]), "application/json", ids)
        if req.kind == "wrong-type":
            # Its events were never going to be accepted: they count as sent, never acknowledged.
            return req
        self.busy.update(k for _, k in req.events)
        return req

    async def send(self, session: aiohttp.ClientSession, req: Request) -> None:
        try:
            await self._send(session, req)
        finally:
            self.busy.difference_update(k for _, k in req.events)
            self.in_flight.release()

    async def _send(self, session: aiohttp.ClientSession, req: Request) -> None:
        deadline = time.monotonic() + RETRY_FOR
        fe = req.home
        tries = 0
        while True:
            tries += 1
            started = time.perf_counter()
            status, answer = await self._post(session, fe, req)
            latency = time.perf_counter() - started
            self.logs.statuses[f"{req.kind} {status}"] += 1
            if status == 202 and isinstance(answer, dict):
                self._accepted(req, fe, tries, latency, answer)
                return
            if req.kind == "not-json" and status == 400:
                self.logs.bad.append(orjson.dumps({"id": req.bad_id, "dead_letter": False}) + b"\n")
                return
            if req.kind == "wrong-type" and status == 415:
                return
            if status not in (0, 503):
                self.logs.unexpected.append(f"{req.kind}: {status} {str(answer)[:200]}")
                return
            if time.monotonic() > deadline:
                return
            fe = (fe + 1) % len(self.urls)
            await asyncio.sleep(0.2 if tries % len(self.urls) == 0 else 0)

    def _accepted(self, req: Request, fe: int, tries: int, latency: float, answer: dict[str, Any]) -> None:
        rejected = {r["index"] for r in answer.get("rejected", [])}
        index = 0
        for event_id, key in req.events:
            if req.bad_index is not None and index == req.bad_index:
                index += 1
            if index not in rejected:
                self.logs.acked.append(
                    orjson.dumps({"id": event_id, "key": key, "fe": fe, "tries": tries, "lat": latency})
                    + b"\n"
                )
            else:
                self.logs.unexpected.append(f"good event {event_id} rejected: {answer}")
            index += 1
        if req.bad_id is not None:
            ok = req.bad_index in rejected
            self.logs.bad.append(orjson.dumps({"id": req.bad_id, "dead_letter": ok}) + b"\n")
            if not ok:
                self.logs.unexpected.append(f"bad event {req.bad_id} not rejected: {answer}")

    async def _post(self, session: aiohttp.ClientSession, fe: int, req: Request) -> tuple[int, object]:
        try:
            async with session.post(
                self.urls[fe] + "/v1/events", data=req.body, headers={"Content-Type": req.content_type}
            ) as r:
                body = await r.read()
                try:
                    return r.status, orjson.loads(body)
                except orjson.JSONDecodeError:
                    return r.status, body[:200]
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, None

    async def run(self) -> None:
        mean_batch = 6
        interval = mean_batch / self.rate
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
        started = time.monotonic()
        next_at = started
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            asyncio.TaskGroup() as group,
        ):
            group.create_task(self._flusher())
            while time.monotonic() - started < self.seconds:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                await self.in_flight.acquire()
                req = self.make_request(self.rng.randint(1, 2 * mean_batch - 1))
                if req is None:
                    self.in_flight.release()
                    continue
                group.create_task(self.send(session, req))
            self._stopping = True
        self.logs.write(self.logs.take())
        summary = {
            "events": self.n,
            "seconds": time.monotonic() - started,
            "statuses": dict(self.logs.statuses),
            "unexpected": self.logs.unexpected[:50],
            "unexpected_count": len(self.logs.unexpected),
        }
        (self.logs.out / "load-summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))

    async def _flusher(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(self.logs.write, self.logs.take())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", action="append", required=True, help="front end base URL (repeat)")
    parser.add_argument("--rate", type=float, default=300.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(Generator(args.url, args.rate, args.seconds, args.seed, args.out).run())


if __name__ == "__main__":
    main()
