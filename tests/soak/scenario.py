"""One soak run: topology up, load and faults on the schedule, heal, drain, check, tear down."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.soak import checker, schedule
from tests.soak.load import RETRY_FOR
from tests.soak.schedule import Fault, Kind
from tests.soak.topology import ROOT, Proc, Topology

__all__ = ["Options", "run"]


@dataclass(frozen=True)
class Options:
    seconds: float
    seed: int
    stream: str = "kinesis"
    warehouse: str = "postgres"
    rate: float = 300.0
    workdir: Path = Path("/tmp")
    drain_timeout: float = 120.0
    stop_timeout: float = 30.0
    """Seconds a graceful stop (SIGTERM) may take before SIGKILL, once the pipeline has drained."""


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Run:
    def __init__(self, opts: Options, topo: Topology) -> None:
        self.opts = opts
        self.topo = topo
        self.rng = random.Random(opts.seed)
        self.t0 = 0.0
        self.down: set[str] = set()
        self.restarting: dict[str, float] = {}
        self.crashes: list[str] = []
        self._reshard: threading.Thread | None = None

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.t0:6.1f}s]"

    def _proc(self, fault: Fault) -> Proc:
        if fault.kind in (Kind.FRONT_END_KILL, Kind.SPOOL_FULL):
            return self.topo.front_ends[fault.target]
        return self.topo.consumers[fault.target]

    def begin(self, fault: Fault) -> str:
        topo, kind = self.topo, fault.kind
        if kind in (Kind.FRONT_END_KILL, Kind.CONSUMER_KILL):
            p = self._proc(fault)
            self.down.add(p.name)
            p.kill()
        elif kind is Kind.CONSUMER_PAUSE:
            self._proc(fault).send(signal.SIGSTOP)
        elif kind is Kind.CONSUMER_RESTART:
            p = self._proc(fault)
            self.down.add(p.name)
            p.send(signal.SIGTERM)
        elif kind is Kind.STREAM_STALL:
            topo.stall_stream()
        elif kind is Kind.THROTTLE:
            topo.throttle(int(fault.duration * 20))
        elif kind is Kind.RECORD_ERRORS:
            topo.fail_records(0.25)
        elif kind is Kind.WAREHOUSE_CUT:
            topo.cut_warehouse()
        elif kind is Kind.RESHARD:
            self._reshard = threading.Thread(target=self._split, args=(self.rng.randrange(100),), daemon=True)
            self._reshard.start()
            return "started in the background"
        elif kind is Kind.SPOOL_FULL:
            return topo.fill_spool(fault.target)
        return ""

    def _split(self, pick: int) -> None:
        try:
            shard = self.topo.split_a_shard(pick)
        except Exception as exc:
            self.crashes.append(f"reshard failed: {exc}")
            say(f"{self.stamp()} !! reshard failed: {exc}")
            return
        say(f"{self.stamp()} reshard done: split {shard}")

    def join_reshard(self) -> None:
        if self._reshard is not None:
            self._reshard.join(120)

    def end(self, fault: Fault) -> str:
        topo, kind = self.topo, fault.kind
        if kind in (Kind.FRONT_END_KILL, Kind.CONSUMER_KILL):
            p = self._proc(fault)
            p.start()
            self.down.discard(p.name)
        elif kind is Kind.CONSUMER_PAUSE:
            self._proc(fault).send(signal.SIGCONT)
        elif kind is Kind.CONSUMER_RESTART:
            self.restarting[self._proc(fault).name] = time.monotonic() + 30
            self._restart_stopped()
            return "restart once it has exited"
        elif kind is Kind.STREAM_STALL:
            topo.release_stream()
        elif kind is Kind.THROTTLE:
            topo.end_throttle()
        elif kind is Kind.RECORD_ERRORS:
            topo.end_record_errors()
        elif kind is Kind.WAREHOUSE_CUT:
            topo.restore_warehouse()
        elif kind is Kind.SPOOL_FULL:
            topo.free_spool(fault.target)
        return ""

    def _restart_stopped(self) -> None:
        for p in self.topo.consumers:
            due = self.restarting.get(p.name)
            if due is None:
                continue
            if p.alive() and time.monotonic() > due:
                say(f"{self.stamp()} {p.name} still draining after SIGTERM: SIGKILL")
                p.kill()
            if not p.alive():
                code = p.proc.returncode if p.proc is not None else None
                if code not in (0, None):
                    self.crashes.append(f"{p.name} exited {code} after SIGTERM")
                p.start()
                say(f"{self.stamp()} {p.name} restarted (SIGTERM exit status {code})")
                del self.restarting[p.name]
                self.down.discard(p.name)

    def watch(self) -> None:
        """Between actions: restart what a graceful stop finished, and catch unexpected exits."""
        self._restart_stopped()
        for p in self.topo.processes():
            if p.name not in self.down and not p.alive():
                code = p.proc.returncode if p.proc is not None else None
                self.crashes.append(f"{p.name} exited on its own with status {code} at {self.stamp()}")
                say(f"{self.stamp()} !! {p.name} exited on its own (status {code}); restarting it")
                p.start()

    def wait_until(self, at: float) -> None:
        while (left := self.t0 + at - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            self.watch()


def _timeline(faults: list[Fault]) -> list[tuple[float, int, bool, Fault]]:
    steps = []
    for i, f in enumerate(faults):
        steps.append((f.at, i, True, f))
        if f.duration:
            steps.append((f.until, i, False, f))
    return sorted(steps, key=lambda s: (s[0], not s[2], s[1]))


def run(opts: Options) -> int:
    faults = schedule.build(opts.seed, opts.seconds, kinesis=opts.stream == "kinesis")
    say(f"soak: {opts.seconds:g} s of load at {opts.rate:g} events/s, stream {opts.stream}, "
        f"warehouse {opts.warehouse}, seed {opts.seed}, work dir {opts.workdir}")  # fmt: skip
    say(schedule.describe(faults, opts.seed))
    if opts.stream == "embedded":
        skipped = ", ".join(k.value for k in schedule.KINESIS_ONLY)
        say(f"  (not on the embedded stream: {skipped})")
    started = time.monotonic()
    with Topology(opts.workdir, stream=opts.stream, warehouse=opts.warehouse) as topo:
        say(f"topology up in {time.monotonic() - started:.1f} s: 2 front ends, 3 consumers; "
            f"spool disk: {topo.spool_mode}")  # fmt: skip
        load_dir = opts.workdir / "load"
        argv = [sys.executable, "-m", "tests.soak.load", "--rate", str(opts.rate),
                "--seconds", str(opts.seconds), "--seed", str(opts.seed), "--out", str(load_dir)]  # fmt: skip
        for fe in topo.front_ends:
            argv += ["--url", fe.url]
        with open(topo.logs / "load.log", "wb") as out:
            generator = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        r = Run(opts, topo)
        r.t0 = time.monotonic()
        try:
            for at, _, starting, fault in _timeline(faults):
                r.wait_until(at)
                note = r.begin(fault) if starting else r.end(fault)
                verb = "begin" if starting else "end  "
                say(f"{r.stamp()} {verb} {fault.label()}{': ' + note if note else ''}")
            r.wait_until(opts.seconds)
            deadline = time.monotonic() + RETRY_FOR + 30
            while generator.poll() is None and time.monotonic() < deadline:
                r.wait_until(time.monotonic() - r.t0 + 0.5)
        finally:
            if generator.poll() is None:
                generator.kill()
            generator.wait()
        r.join_reshard()
        say(f"{r.stamp()} load stopped (generator exit status {generator.returncode}); healing every fault")
        topo.heal()
        r.down.clear()
        client = checker.read_client_log(load_dir)
        drained = _drain(r, topo, client, opts.drain_timeout)
        say(f"{r.stamp()} {'drained' if drained else 'NOT drained before the deadline'}; stopping gracefully")
        exits = _stop_all(topo.front_ends, opts.stop_timeout) | _stop_all(topo.consumers, opts.stop_timeout)
        bad_exits = {n: c for n, c in exits.items() if c != 0}
        wh = asyncio.run(checker.read_warehouse(topo.warehouse_url, checker.stream_name(topo.admin_stream)))
        parents = asyncio.run(checker.shard_parents(topo.admin_stream))
        report = checker.check(client, wh, parents)
        if generator.returncode != 0:
            report.failures.append(f"load generator exited {generator.returncode} (see {topo.logs}/load.log)")
        if not drained:
            report.failures.append("the pipeline did not drain before the deadline")
        report.failures += [f"unexpected exit: {c}" for c in r.crashes]
        if bad_exits:
            report.failures.append(f"graceful stop exit statuses: {bad_exits}")
        refusals = [p.name for p in topo.front_ends if "spool write failed" in p.log_text()]
        say(report.table())
        if refusals:
            say(f"note: spool write failed (disk full) in {', '.join(refusals)}; "
                "see the logs for how long it refused events")  # fmt: skip
        for failure in report.failures:
            say(f"FAIL: {failure}")
        for example in report.examples:
            say(f"  {example}")
        (opts.workdir / "report.json").write_bytes(
            orjson.dumps(
                {"seed": opts.seed, "stream": opts.stream, "warehouse": opts.warehouse,
                 "seconds": opts.seconds, "report": report.__dict__, "exits": exits},
                option=orjson.OPT_INDENT_2, default=str,
            )
        )  # fmt: skip
    return 1 if report.failures else 0


def _stop_all(procs: list[Proc], timeout: float) -> dict[str, int | None]:
    """SIGTERM every process at once and wait for each (SIGKILL past `timeout`); exit statuses."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + timeout
    return {p.name: p.wait_exit(max(0.1, deadline - time.monotonic())) for p in procs}


def _drain(r: Run, topo: Topology, client: checker.ClientLog, timeout: float) -> bool:
    """Poll until every acknowledged id is loaded, the front ends hold nothing, every shard is read."""
    deadline = time.monotonic() + timeout
    acked = set(client.acked)
    last = ""
    while time.monotonic() < deadline:
        r.watch()
        try:
            wh = asyncio.run(
                checker.read_warehouse(topo.warehouse_url, checker.stream_name(topo.admin_stream))
            )
        except Exception as exc:  # the warehouse may still be coming back
            last = f"warehouse: {exc}"
            time.sleep(1)
            continue
        loaded = {row[0] for row in wh.rows}
        missing = len(acked - loaded)
        buffered = [p.metric("shardflow_buffer_events") for p in topo.front_ends]
        status = f"{missing} acknowledged not loaded yet, front-end buffers {buffered}"
        if missing == 0 and all(b == 0 for b in buffered):
            unread = asyncio.run(checker.unread_shards(topo.admin_stream, wh.checkpoints))
            if not unread:
                return True
            status += f", unread shards {unread}"
        if status != last:
            say(f"{r.stamp()} draining: {status}")
            last = status
        time.sleep(1)
    return False
