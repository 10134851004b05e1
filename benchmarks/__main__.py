"""The harness behind `make bench` / `make bench-quick`: every benchmark module, one JSON line per figure.

    python -m benchmarks [--quick] [--only MODULE ...] [-- ARGS passed to every module run]

Each module runs as its own process (`python -m benchmarks.<module> [--quick]`), one after the
other so they never compete for the two cores. Every JSON line a module prints is relayed to
stdout exactly as printed and checked for the required shape; any other output goes to stderr.
A module that is missing, crashes, overruns its time, prints a malformed line or leaves out a
figure it owes gets a JSON line of its own with `"error"`, and the harness goes on. Every line
also lands in `benchmarks/results/latest.jsonl` for `make bench-report`.

Time: the whole run fits `--budget` seconds (600, quick 120). Each module has a share; a module
that finishes early leaves its slack to the ones after it. Exit status is 0 only when every
figure came out well-formed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import ROOT, error_line, process_tree, shape_problems

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Module:
    name: str
    figures: tuple[str, ...]
    """Benchmark names the module owes (an error line stands in for each one it leaves out)."""
    share: float
    """Seconds of the full budget; quick runs scale these down."""
    quick_share: float


MODULES: tuple[Module, ...] = (
    Module("ingest", ("ingest_single", "ingest_batch"), 110, 18),
    Module(
        "stream",
        ("stream_put", "stream_read", "stream_put_aggregated", "stream_read_aggregated"),
        80,
        15,
    ),
    Module("consume", ("consume",), 40, 9),
    Module("sink", ("sink_postgres", "sink_mysql"), 50, 6),
    Module("leases_scale", ("leases_scale",), 40, 10),
    Module("ingest_latency", ("ingest_stalled",), 40, 12),
    Module("end_to_end", ("end_to_end", "end_to_end_kinesis"), 220, 50),
)


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))


def _kill_tree(pid: int) -> None:
    """SIGKILL a module and everything under it, including children in sessions of their own."""
    for p in reversed(process_tree(pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def _write(line: str, sink: list[str]) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    sink.append(line)


def _error(name: str, message: str, module: str, sink: list[str]) -> None:
    _write(orjson.dumps(error_line(name, message, module=module)).decode(), sink)


def run_module(module: Module, argv: list[str], timeout: float, out: list[str]) -> bool:
    """Run one module, relaying and checking its lines; True when every owed figure came out valid."""
    if not (ROOT / "benchmarks" / f"{module.name}.py").exists():
        for figure in module.figures or (module.name,):
            _error(figure, f"benchmarks/{module.name}.py is missing", module.name, out)
        return False
    cmd = [sys.executable, "-m", f"benchmarks.{module.name}", *argv]
    print(f"# {' '.join(cmd[1:])} (up to {timeout:.0f}s)", file=sys.stderr, flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    outcome = Outcome()
    seen: set[str] = set()
    ok = True

    def relay_stdout() -> None:
        nonlocal ok
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            try:
                parsed: Any = orjson.loads(text)
            except orjson.JSONDecodeError:
                sys.stderr.write(f"[{module.name}] {text}\n")
                continue
            if not isinstance(parsed, dict) or "benchmark" not in parsed:
                sys.stderr.write(f"[{module.name}] {text}\n")
                continue
            _write(text, out)
            outcome.lines.append(text)
            seen.add(str(parsed["benchmark"]))
            problems = shape_problems(parsed)
            if "error" in parsed:
                ok = False
            elif problems:
                ok = False
                _error(str(parsed["benchmark"]), "malformed line: " + "; ".join(problems), module.name, out)

    def relay_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            outcome.stderr_tail.append(text)
            sys.stderr.write(f"[{module.name}] {text}\n")

    readers = [threading.Thread(target=relay_stdout), threading.Thread(target=relay_stderr)]
    for reader in readers:
        reader.start()
    try:
        code: int | None = proc.wait(max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.wait()
        code = None
    except BaseException:
        _kill_tree(proc.pid)
        proc.wait()
        raise
    for reader in readers:
        reader.join(10)
    elapsed = time.monotonic() - started
    tail = " | ".join(list(outcome.stderr_tail)[-5:])[-800:]
    if code is None:
        reason = f"timed out after {elapsed:.0f}s (its share of the budget)"
    elif code != 0 and not outcome.lines:
        reason = f"exited {code}: {tail or 'no output'}"
    else:
        reason = ""
    missing = [f for f in module.figures if f not in seen]
    for figure in missing or ((module.name,) if reason and not module.figures else ()):
        _error(figure, reason or f"module exited {code} without this figure: {tail}", module.name, out)
    print(f"# {module.name}: {elapsed:.1f}s", file=sys.stderr, flush=True)
    return ok and not missing and not reason


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, passthrough = args_in[:cut], args_in[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run every benchmark module.")
    parser.add_argument("--quick", action="store_true", help="short runs: the whole harness in 2 minutes")
    parser.add_argument(
        "--only",
        action="append",
        metavar="MODULE",
        help="run only this module (repeatable): " + ", ".join(m.name for m in MODULES),
    )
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 600, quick 120)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.jsonl", help="where all lines go")
    args = parser.parse_args(args_in)

    modules = [m for m in MODULES if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MODULES}
    modules += [Module(name, (), 60, 20) for name in sorted(unknown)]
    budget = args.budget or float(os.environ.get("SHARDFLOW_BENCH_BUDGET", 120 if args.quick else 600))
    shares = [m.quick_share if args.quick else m.share for m in modules]
    scale = budget / sum(shares) if sum(shares) else 1.0
    module_argv = (["--quick"] if args.quick else []) + passthrough

    lines: list[str] = []
    all_ok = True
    deadline = time.monotonic() + budget
    for i, module in enumerate(modules):
        later = sum(shares[i + 1 :]) * scale
        timeout = deadline - time.monotonic() - later
        if timeout < 1:
            for figure in module.figures or (module.name,):
                _error(figure, "skipped: the time budget ran out", module.name, lines)
            all_ok = False
            continue
        all_ok = run_module(module, module_argv, timeout, lines) and all_ok

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(line + "\n" for line in lines))
    print(f"# {len(lines)} lines -> {args.output}", file=sys.stderr, flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
