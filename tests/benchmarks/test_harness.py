"""The benchmark harness: lines of the required shape, errors as lines, and a tiny real end-to-end run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from benchmarks.common import RssMonitor, figure, interleaved, process_tree, shape_problems
from tests.support.services import fresh_postgres

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("benchmark", "unit", "shardflow", "limit", "ratio_limit")


def _harness(*args: str, timeout: float = 100.0) -> tuple[int, list[dict[str, object]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
    )
    lines = [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr.decode(errors="replace")


def test_figure_has_the_required_shape_and_ratios() -> None:
    line = figure("stream_put", 30_000, 60_000, peers={"async_kinesis": 10_000, "naive": 1_000}, rss_mb=80.5)
    assert list(line)[:5] == list(REQUIRED)
    assert line["ratio_limit"] == 0.5
    assert line["ratio_async_kinesis"] == 3.0
    assert line["ratio_naive"] == 30.0
    assert shape_problems(line) == []


def test_shape_problems_names_what_is_wrong() -> None:
    assert shape_problems({"benchmark": "x"}) == [
        "missing 'unit'",
        "missing 'shardflow'",
        "missing 'limit'",
        "missing 'ratio_limit'",
    ]
    bad_ratio = {"benchmark": "x", "unit": "events/s", "shardflow": 10, "limit": 20, "ratio_limit": 2.0}
    assert shape_problems(bad_ratio) == ["ratio_limit 2.0 != shardflow/limit"]
    orphan = {**bad_ratio, "ratio_limit": 0.5, "ratio_naive": 3.0}
    assert shape_problems(orphan) == ["ratio_naive without the peer figure 'naive'"]
    assert shape_problems({**bad_ratio, "unit": "rows/s", "ratio_limit": 0.5}) == [
        "unit must be 'events/s', not 'rows/s'"
    ]


def test_interleaved_alternates_order_and_takes_the_median() -> None:
    calls: list[str] = []
    figures = {"a": iter([1.0, 9.0, 3.0]), "b": iter([5.0, 4.0, 6.0])}

    def contender(name: str) -> float:
        calls.append(name)
        return next(figures[name])

    result = interleaved({"a": lambda: contender("a"), "b": lambda: contender("b")}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert result == {"a": 3.0, "b": 5.0}


def test_rss_monitor_counts_every_process_of_a_tree() -> None:
    script = "import subprocess,sys,time; b=bytearray(40<<20); c=subprocess.Popen([sys.executable,'-c',"
    script += "'b=bytearray(30<<20); import time; time.sleep(30)']); print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        monitor = RssMonitor(interval=0.05).start()
        monitor.watch("tree", proc.pid)
        deadline = time.monotonic() + 10
        while len(process_tree(proc.pid)) < 2 or monitor.peaks()["tree"] < 70:
            assert time.monotonic() < deadline, f"tree peak stayed at {monitor.peaks()}"
            time.sleep(0.05)
        peaks = monitor.stop()
        assert 70 <= peaks["tree"] < 200
    finally:
        for pid in reversed(process_tree(proc.pid)):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        proc.wait()


def test_a_missing_module_becomes_an_error_line_and_the_others_still_run(tmp_path: Path) -> None:
    out = tmp_path / "latest.jsonl"
    code, lines, _ = _harness("--only", "no_such_bench", "--budget", "30", "--output", str(out))
    assert code == 1
    assert len(lines) == 1
    assert lines[0]["benchmark"] == "no_such_bench"
    assert "missing" in str(lines[0]["error"])
    assert shape_problems(lines[0]) == []
    assert [orjson.loads(x) for x in out.read_text().splitlines()] == lines


@pytest.mark.slow
def test_quick_end_to_end_through_the_harness_prints_valid_lines(tmp_path: Path) -> None:
    """The real pipeline (CLI subprocesses, embedded stream and kinesalite, PostgreSQL), tiny sizes."""
    with fresh_postgres():  # skips (or fails in CI) when PostgreSQL is down
        pass
    out = tmp_path / "latest.jsonl"
    code, lines, stderr = _harness(
        "--quick",
        "--only",
        "end_to_end",
        "--budget",
        "100",
        "--output",
        str(out),
        "--",
        "--seconds",
        "3",
        "--warmup",
        "1",
        "--copy-rows",
        "2000",
        timeout=110,
    )
    names = [line["benchmark"] for line in lines]
    assert names == ["end_to_end", "end_to_end_kinesis"], stderr[-2000:]
    for line in lines:
        assert "error" not in line, line
        assert shape_problems(line) == [], line
        assert list(line)[:5] == list(REQUIRED)
        assert isinstance(line["shardflow"], float) and line["shardflow"] > 0
        assert isinstance(line["limit"], float) and line["limit"] > 0
        assert line["exactly_once"] is True, line
        rss = line["rss_mb"]
        assert isinstance(rss, dict) and {"ingest", "consume0", "consume1", "loadgen"} <= set(rss)
        assert line["consumers"] == 2
    assert code == 0, stderr[-2000:]
    assert [orjson.loads(x) for x in out.read_text().splitlines()] == lines
