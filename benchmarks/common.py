"""Helpers every benchmark may share: the JSON line, interleaved A/B rounds, peak RSS, subprocesses.

The one output contract (issue 7): each figure is ONE JSON line shaped
`{"benchmark", "unit": "events/s", "shardflow", "limit", "ratio_limit", "<peer>", "ratio_<peer>", ...}`,
printed by `emit` and checked by `shape_problems` (the harness validates every line with it).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "POSTGRES_DSN",
    "ROOT",
    "RssMonitor",
    "emit",
    "error_line",
    "figure",
    "interleaved",
    "interleaved_async",
    "kinesalite_server",
    "median",
    "process_tree",
    "shape_problems",
    "spawn",
    "stop_process",
    "throwaway_postgres",
    "tree_peak_rss_mb",
]

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_DSN = os.environ.get("SHARDFLOW_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED_KEYS = ("benchmark", "unit", "shardflow", "limit", "ratio_limit")
T = TypeVar("T")


# --- the JSON line ---------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def figure(
    name: str,
    shardflow: float,
    limit: float,
    *,
    peers: Mapping[str, float] | None = None,
    rss_mb: float | Mapping[str, float] | None = None,
    unit: str = "events/s",
    **extra: Any,
) -> dict[str, Any]:
    """A result line in the required key order, ratios computed here so every benchmark agrees."""
    line: dict[str, Any] = {
        "benchmark": name,
        "unit": unit,
        "shardflow": round(shardflow, 1),
        "limit": round(limit, 1),
        "ratio_limit": _ratio(shardflow, limit),
    }
    for peer, value in (peers or {}).items():
        line[peer] = round(value, 1)
        line[f"ratio_{peer}"] = _ratio(shardflow, value)
    if rss_mb is not None:
        line["rss_mb"] = rss_mb
    line.update(extra)
    return line


def error_line(name: str, error: str, **extra: Any) -> dict[str, Any]:
    """The line for a benchmark that could not produce its figure (the harness goes on)."""
    return {
        "benchmark": name,
        "unit": "events/s",
        "shardflow": None,
        "limit": None,
        "ratio_limit": None,
        "error": error,
        **extra,
    }


def emit(line: Mapping[str, Any]) -> None:
    """Print one JSON line to stdout and flush, so a parent reading the pipe sees it at once."""
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def shape_problems(line: object) -> list[str]:
    """What is wrong with a result line ([] when it has the required shape).

    A line with `error` may carry nulls for the figures; every other line needs numbers, the
    unit `events/s`, `ratio_limit == shardflow/limit`, and a `ratio_<peer>` beside each peer.
    """
    if not isinstance(line, dict):
        return ["not a JSON object"]
    problems = [f"missing {key!r}" for key in REQUIRED_KEYS if key not in line]
    if problems:
        return problems
    if not isinstance(line["benchmark"], str) or not line["benchmark"]:
        problems.append("benchmark must be a non-empty string")
    if "error" in line:
        return problems
    if line["unit"] != "events/s":
        problems.append(f"unit must be 'events/s', not {line['unit']!r}")
    numbers = {k: line[k] for k in ("shardflow", "limit")}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{key} must be a number, not {value!r}")
    if problems:
        return problems
    ratio = line["ratio_limit"]
    if line["limit"] and (
        not isinstance(ratio, int | float) or abs(ratio - line["shardflow"] / line["limit"]) > 0.01
    ):
        problems.append(f"ratio_limit {ratio!r} != shardflow/limit")
    for key in line:
        if key.startswith("ratio_") and key != "ratio_limit":
            peer = key[len("ratio_") :]
            if peer not in line:
                problems.append(f"{key} without the peer figure {peer!r}")
    return problems


# --- interleaved rounds ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved(contenders: Mapping[str, Callable[[], float]], rounds: int = 3) -> dict[str, float]:
    """Run each contender once per round, alternating the order, and return each one's median.

    Alternating (A B, B A, A B, ...) means drift of the machine over the minute hits both alike,
    so it cancels in the ratio. Each callable returns its own figure (events/s) for one round.
    """
    results: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(max(rounds, 1)):
        for name in names if i % 2 == 0 else reversed(names):
            results[name].append(contenders[name]())
    return {name: median(values) for name, values in results.items()}


async def interleaved_async(
    contenders: Mapping[str, Callable[[], Awaitable[float]]], rounds: int = 3
) -> dict[str, float]:
    """`interleaved` for coroutines."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(max(rounds, 1)):
        for name in names if i % 2 == 0 else reversed(names):
            results[name].append(await contenders[name]())
    return {name: median(values) for name, values in results.items()}


# --- memory ----------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _hwm_kib(pid: int) -> int:
    """The kernel's own peak resident set of one process (VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_rss_mb(pid: int) -> float:
    """Sum of each live process's peak RSS in the tree rooted at `pid` (a snapshot, MiB)."""
    return round(sum(_hwm_kib(p) for p in process_tree(pid)) / 1024, 1)


class RssMonitor:
    """Peak RSS per named process tree, sampled in a thread until `stop()`.

    The figure for a tree is the sum over its processes (the root and every child, such as a
    worker pool) of each process's own peak (VmHWM), remembered after a child exits. Sums of
    peaks can overstate a tree whose children peaked at different times, never understate it.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._roots: dict[str, int] = {}
        self._peaks: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._roots[name] = pid
            self._peaks.setdefault(name, {})

    def start(self) -> RssMonitor:
        self._thread.start()
        return self

    def sample(self) -> None:
        with self._lock:
            roots = dict(self._roots)
        for name, root in roots.items():
            for pid in process_tree(root):
                kib = _hwm_kib(pid)
                with self._lock:
                    seen = self._peaks[name]
                    seen[pid] = max(seen.get(pid, 0), kib)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def stop(self) -> dict[str, float]:
        """Stop sampling; peak MiB per name."""
        if self._thread.is_alive():
            self.sample()
            self._stop.set()
            self._thread.join()
        return self.peaks()

    def peaks(self) -> dict[str, float]:
        with self._lock:
            return {name: round(sum(seen.values()) / 1024, 1) for name, seen in self._peaks.items()}


# --- subprocesses ----------------------------------------------------------------------------------


def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so `stop_process` can signal its whole group).

    `args[0] == "python"` means this interpreter, so load generators run with the venv's Python.
    """
    argv = [sys.executable, *args[1:]] if args and args[0] == "python" else list(args)
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        argv,
        cwd=cwd or ROOT,
        env=full_env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Signal the process group, wait up to `grace`, then SIGKILL the group; the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    else:
        # The leader is gone; make sure no child of its group outlives it (a worker pool).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.returncode


_KINESALITE_JS = """
const k = require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 1000});
k.listen(0, '127.0.0.1', () => console.log('listening ' + k.address().port));
"""


@contextmanager
def kinesalite_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """kinesalite on a free loopback port: (endpoint URL, process). RuntimeError when not installed."""
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "kinesalite").is_dir():
        raise RuntimeError("kinesalite not installed (run `npm install` in the project root)")
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)
    proc = spawn([node, "-e", _KINESALITE_JS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r"listening (\d+)", line)
        if not match:
            raise RuntimeError(f"kinesalite did not start: {line!r}")
        yield f"http://127.0.0.1:{match.group(1)}", proc
    finally:
        stop_process(proc, grace=2, sig=signal.SIGKILL)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@asynccontextmanager
async def throwaway_postgres(dsn: str = POSTGRES_DSN) -> AsyncIterator[str]:
    """A fresh database `sfb_<random>` on the server of `dsn`, dropped (forcibly) afterwards."""
    import asyncpg

    name = "sfb_" + secrets.token_hex(6)
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(dsn, name)
    finally:
        admin = await asyncpg.connect(dsn, timeout=10)
        try:
            await asyncio.wait_for(admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), 30)
        finally:
            await admin.close()


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds
