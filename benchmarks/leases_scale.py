"""Leases at scale, simulated: 256 shards, 32 consumers as tasks in a few processes, PostgreSQL.

    python -m benchmarks.leases_scale [--quick] [--warehouse postgresql|sqlite]

Many machines cannot be had here, so each consumer is a `LeaseManager` driven the way `Consumer`
drives it (renew, follow hand-off requests, balance, every `renew` seconds), with no records to
read: a hand-off is released at the next renewal, as a consumer with an instant commit would.
The shard list comes from a stand-in stream that only answers `describe()`.

Measured: seconds to converge to a fair share (every workable lease held and unexpired, owners
as expected, spread at most one) after start, after 8 consumers vanish (stop renewing, release
nothing) and after 8 join; lease-table row writes per second at steady state; and, from every
consumer's own log of when it believed each lease valid (taken .. released, lost, or last renewal
+ lease timeout), the number of moments a shard was held by two consumers whose leases were both
valid, which must be 0.

The JSON line: `shardflow` = lease-table row writes/s at steady state (unit events/s: write
events), `limit` = the KCL's model at the same settings (every lease renewed every
lease_timeout/3, one conditional write request each), lower is better. `write_statements_per_s`
counts statements: a consumer renews all its leases in one. Convergence times are extra fields.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import emit, error_line, figure, spawn, throwaway_postgres
from processor.streams.base import MAX_HASH_KEY, ShardInfo, StreamDescription
from shard_consumer.leases import LeaseManager, workable
from sinks import Lease, Warehouse, open_warehouse

NAME = "leases_scale"
STREAM = "scale"


class ListOnlyStream:
    """A stand-in stream with `shards` open shards; only `name` and `describe()` are used."""

    def __init__(self, shards: int) -> None:
        self.name = STREAM
        width = (MAX_HASH_KEY + 1) // shards
        self._shards = tuple(
            ShardInfo(
                f"shardId-{i:012d}",
                i * width,
                MAX_HASH_KEY if i == shards - 1 else (i + 1) * width - 1,
            )
            for i in range(shards)
        )

    async def describe(self) -> StreamDescription:
        return StreamDescription(self.name, "ACTIVE", self._shards)


class CountingStore:
    """Delegates to a warehouse's lease methods, counting statements and rows written."""

    def __init__(self, inner: Warehouse) -> None:
        self._inner = inner
        self.rows = 0
        self.calls = 0
        self.take_started: dict[tuple[str, str], float] = {}
        """(owner, shard) -> when the last take call began: the earliest the lease can be valid."""

    async def create_leases(self, stream: str, shards: Sequence[ShardInfo]) -> None:
        self.calls += 1
        await self._inner.create_leases(stream, shards)

    async def list_leases(self, stream: str) -> list[Lease]:
        return await self._inner.list_leases(stream)

    async def take_lease(
        self, stream: str, shard_id: str, owner: str, expected_counter: int, ttl: float
    ) -> Lease | None:
        self.calls += 1
        self.take_started[(owner, shard_id)] = time.time()
        taken = await self._inner.take_lease(stream, shard_id, owner, expected_counter, ttl)
        self.rows += taken is not None
        return taken

    async def renew_leases(
        self,
        stream: str,
        owner: str,
        held: Mapping[str, int],
        ttl: float,
        rates: Mapping[str, float] | None = None,
    ) -> dict[str, Lease]:
        self.calls += 1
        renewed = await self._inner.renew_leases(stream, owner, held, ttl, rates)
        self.rows += len(renewed)
        return renewed

    async def release_lease(self, stream: str, shard_id: str, owner: str, lease_counter: int) -> bool:
        self.calls += 1
        released = await self._inner.release_lease(stream, shard_id, owner, lease_counter)
        self.rows += released
        return released

    async def request_handoff(self, stream: str, shard_id: str, requester: str) -> None:
        self.calls += 1
        self.rows += 1
        await self._inner.request_handoff(stream, shard_id, requester)

    async def now(self) -> float:
        return await self._inner.now()


# --- one worker process: K simulated consumers ----------------------------------------------------


class SimConsumer:
    """One consumer's lease protocol, with its own record of when it believed each lease valid."""

    def __init__(self, manager: LeaseManager, store: CountingStore, renew: float) -> None:
        self.manager = manager
        self.store = store
        self.renew = renew
        self.intervals: list[tuple[str, str, float, float]] = []
        self._start: dict[str, float] = {}
        self._valid_until: dict[str, float] = {}

    def _close(self, shard: str, end: float) -> None:
        started = self._start.pop(shard, None)
        self._valid_until.pop(shard, None)
        if started is not None:
            self.intervals.append((shard, self.manager.consumer_id, started, end))

    async def run(self) -> None:
        manager, timeout = self.manager, self.manager.lease_timeout
        synced = False
        try:
            while True:
                before = time.time()
                try:
                    result = await manager.renew()
                    for shard in manager.held:
                        self._valid_until[shard] = before + timeout
                    for shard in result.lost:
                        self._close(shard, min(time.time(), self._valid_until.get(shard, time.time())))
                    for shard in result.handoffs:
                        self._close(shard, time.time())
                        await manager.release(shard)
                    if not synced:
                        await manager.sync_shards()
                        synced = True
                    for lease in await manager.balance():
                        began = self.store.take_started[(manager.consumer_id, lease.shard_id)]
                        self._start[lease.shard_id] = began
                        self._valid_until[lease.shard_id] = began + timeout
                except Exception as exc:  # a failed cycle is retried on the next one, as Consumer does
                    print(f"{manager.consumer_id}: {exc!r}", file=sys.stderr)
                await asyncio.sleep(self.renew)
        except asyncio.CancelledError:
            now = time.time()
            for shard in list(self._start):
                # vanished: it stops renewing, so its belief lasts until the last renewal expires
                self._close(shard, self._valid_until.get(shard, now))
            raise

    async def leave(self) -> None:
        """Graceful exit: stop using every lease, then release it."""
        for shard in list(self._start):
            self._close(shard, time.time())
            await self.manager.release(shard)


async def worker(args: argparse.Namespace) -> None:
    warehouse = open_warehouse(args.warehouse)
    await warehouse.start()
    store = CountingStore(warehouse)
    stream = ListOnlyStream(args.shards)
    sims = [
        SimConsumer(
            LeaseManager(store, stream, f"{args.prefix}-{i}", lease_timeout=args.lease_timeout),  # type: ignore[arg-type]
            store,
            args.renew,
        )
        for i in range(args.consumers)
    ]
    tasks = [asyncio.create_task(sim.run()) for sim in sims]
    counts = Path(args.counts)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    vanished = False

    async def report() -> None:
        while True:
            state = {
                sim.manager.consumer_id: [
                    len(sim.manager.held),
                    sim.manager.target,
                    sim.manager.consumers,
                    list(sim.manager._steals),
                ]
                for sim in sims
            }
            text = json.dumps({"rows": store.rows, "calls": store.calls, "t": time.time(), "state": state})
            await asyncio.to_thread(counts.write_text, text)
            await asyncio.sleep(0.25)

    reporter = asyncio.create_task(report())
    while True:
        command = (await reader.readline()).decode().strip()
        if command == "vanish":
            vanished = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        elif command in ("exit", ""):
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if not vanished:
        for sim in sims:
            await sim.leave()
    reporter.cancel()
    intervals = [interval for sim in sims for interval in sim.intervals]
    sys.stdout.write(json.dumps({"intervals": intervals, "rows": store.rows, "calls": store.calls}) + "\n")
    sys.stdout.flush()
    await warehouse.close()


# --- the parent: spawn, watch convergence, check overlaps -----------------------------------------


class Workers:
    def __init__(self, args: argparse.Namespace, warehouse_uri: str, tmp: Path) -> None:
        self.args = args
        self.uri = warehouse_uri
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, prefix: str, consumers: int) -> subprocess.Popen[bytes]:
        counts = self.tmp / f"{prefix}.json"
        argv = [
            "python", "-m", "benchmarks.leases_scale", "--worker",
            "--warehouse", self.uri, "--shards", str(self.args.shards),
            "--consumers", str(consumers), "--prefix", prefix, "--counts", str(counts),
            "--lease-timeout", str(self.args.lease_timeout), "--renew", str(self.args.renew),
        ]  # fmt: skip
        proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append((proc, counts))
        return proc

    def rows_written(self, key: str = "rows") -> int:
        total = 0
        for _, counts in self.procs:
            try:
                total += json.loads(counts.read_text())[key]
            except (OSError, ValueError):
                pass
        return total

    def finish(self) -> list[dict[str, Any]]:
        results = []
        for proc, _ in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(b"exit\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            out, _ = proc.communicate(timeout=60)
            lines = out.decode().strip().splitlines()
            if lines:
                results.append(json.loads(lines[-1]))
        return results

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def converged(warehouse: Warehouse, owners_expected: int) -> bool:
    leases = await warehouse.list_leases(STREAM)
    now = await warehouse.now()
    candidates = workable(leases)
    if not candidates or any(x.owner is None or x.expires_at <= now for x in candidates):
        return False
    counts = Counter(x.owner for x in candidates)
    fair = math.ceil(len(candidates) / owners_expected)
    return (
        len(counts) == owners_expected and max(counts.values()) == fair and min(counts.values()) >= fair - 1
    )


async def time_to_converge(warehouse: Warehouse, owners: int, since: float, timeout: float) -> float:
    while not await converged(warehouse, owners):
        if time.monotonic() - since > timeout:
            leases = await warehouse.list_leases(STREAM)
            now = await warehouse.now()
            spread = Counter(x.owner if x.expires_at > now else None for x in leases)
            asked = Counter(x.handoff_to for x in leases if x.handoff_to)
            lowest = min(spread, key=lambda o: spread[o] if o else 999)
            print(f"{lowest}: {_state_of(lowest)}", file=sys.stderr)
            raise TimeoutError(
                f"no fair share among {owners} consumers after {timeout:.0f}s: {spread}; "
                f"hand-offs asked {asked}"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - since


def _state_of(consumer: str | None) -> object:
    for path in Path(tempfile.gettempdir()).glob("sf-bench-leases-*/*.json"):
        try:
            state = json.loads(path.read_text()).get("state", {})
        except ValueError:
            continue
        if consumer in state:
            return state[consumer]
    return None


def overlaps(intervals: list[list[Any]]) -> int:
    """Pairs of intervals on one shard, of different consumers, that intersect."""
    by_shard: dict[str, list[tuple[float, float, str]]] = {}
    for shard, owner, start, end in intervals:
        by_shard.setdefault(shard, []).append((start, end, owner))
    found = 0
    for spans in by_shard.values():
        spans.sort()
        for i, (_start, end, owner) in enumerate(spans):
            for other_start, _other_end, other_owner in spans[i + 1 :]:
                if other_start >= end:
                    break
                found += other_owner != owner
    return found


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sf-bench-leases-") as tmp:
        if args.warehouse == "sqlite":
            return await _simulate(args, f"sqlite:///{tmp}/warehouse.db", Path(tmp))
        async with throwaway_postgres() as uri:
            return await _simulate(args, uri, Path(tmp))


async def _simulate(args: argparse.Namespace, uri: str, tmp: Path) -> dict[str, Any]:
    warehouse = open_warehouse(uri)
    await warehouse.start()
    workers = Workers(args, uri, tmp)
    per_proc = args.consumers // args.processes
    try:
        started = time.monotonic()
        for p in range(args.processes):
            workers.start(f"p{p}", per_proc)
        t_start = await time_to_converge(warehouse, args.consumers, started, args.timeout)

        rows_before, calls_before, t0 = (
            workers.rows_written(),
            workers.rows_written("calls"),
            time.monotonic(),
        )
        await asyncio.sleep(args.steady)
        elapsed = time.monotonic() - t0
        writes_per_s = (workers.rows_written() - rows_before) / elapsed
        statements_per_s = (workers.rows_written("calls") - calls_before) / elapsed

        victim, _ = workers.procs[0]
        assert victim.stdin is not None
        victim.stdin.write(b"vanish\n")
        victim.stdin.flush()
        vanished = time.monotonic()
        t_vanish = await time_to_converge(warehouse, args.consumers - per_proc, vanished, args.timeout)

        joined = time.monotonic()
        workers.start("joined", per_proc)
        t_join = await time_to_converge(warehouse, args.consumers, joined, args.timeout)

        results = workers.finish()
    finally:
        workers.kill()
        await warehouse.close()
    intervals = [interval for result in results for interval in result["intervals"]]
    double = overlaps(intervals)
    kcl_model = args.shards / (args.lease_timeout / 3)
    line = figure(
        NAME,
        writes_per_s,
        kcl_model,
        measure="lease-table row writes/s at steady state (lower is better); limit: KCL renewal model",
        warehouse=args.warehouse,
        shards=args.shards,
        consumers=args.consumers,
        processes=args.processes,
        lease_timeout_s=args.lease_timeout,
        renew_s=args.renew,
        write_statements_per_s=round(statements_per_s, 1),
        kcl_write_requests_per_s=round(kcl_model, 1),
        converge_start_s=round(t_start, 2),
        converge_after_vanish_s=round(t_vanish, 2),
        converge_after_join_s=round(t_join, 2),
        lease_intervals=len(intervals),
        double_held=double,
    )
    if double:
        line["error"] = f"{double} times a shard was held by two consumers with valid leases"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leases_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 shards, 8 consumers, short leases")
    parser.add_argument(
        "--warehouse", default="postgresql", help="postgresql or sqlite (parent); URI (worker)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="c", help=argparse.SUPPRESS)
    parser.add_argument("--counts", default="", help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int)
    parser.add_argument("--consumers", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--lease-timeout", type=float)
    parser.add_argument("--renew", type=float)
    parser.add_argument("--steady", type=float, help="seconds of steady state to count writes over")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up converging after this long")
    args = parser.parse_args()
    quick = args.quick
    args.shards = args.shards or (64 if quick else 256)
    args.consumers = args.consumers or (8 if quick else 32)
    args.processes = args.processes or (2 if quick else 4)
    args.lease_timeout = args.lease_timeout or (1.5 if quick else 3.0)
    args.renew = args.renew or args.lease_timeout / 3
    args.steady = args.steady or (1.0 if quick else 4.0)
    if args.worker:
        asyncio.run(worker(args))
        return
    try:
        line = asyncio.run(parent(args))
    except Exception as exc:  # the harness wants a line either way
        line = error_line(NAME, f"{type(exc).__name__}: {exc}")
    emit(line)


if __name__ == "__main__":
    main()
