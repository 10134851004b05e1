"""How many events/s `shardflow run` sustains end to end (HTTP in, rows committed in SQLite).

    python -m tests.e2e.measure_run [--seconds 20] [--generators 1]

`shardflow run` (defaults: embedded stream, 4 shards, SQLite warehouse) and the load generators
(`benchmarks.loadgen`, 100-event NDJSON requests, as fast as answered) are separate processes.
Loaded rows are sampled from the warehouse file once a second; the figure is the rows loaded per
second between the end of a warm-up and the end of the load window, and the run ends by checking
every accepted event is in page_views once. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tests.e2e.harness import ROOT, Shardflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.measure_run")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--generators", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="shardflow run --workers (0: one per core)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sf = Shardflow(Path(tmp) / "data", workers=args.workers)
        sf.start()
        try:
            generators = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.loadgen",
                        "--url",
                        f"{sf.url}/v1/events",
                        "--tag",
                        f"g{i}",
                        "--connections",
                        "8",
                        "--events",
                        "100",
                        "--duration",
                        str(args.warmup + args.seconds),
                        "--every",
                        "5",
                    ],
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                )
                for i in range(args.generators)
            ]
            started = time.monotonic()
            time.sleep(args.warmup)
            warm_rows, warm_at = sf.count(), time.monotonic()
            accepted = 0
            for gen in generators:
                out, _ = gen.communicate(timeout=args.warmup + args.seconds + 60)
                final = orjson.loads(out.splitlines()[-1])
                accepted += int(final["accepted"])
            end_rows, end_at = sf.count(), time.monotonic()
            sf.wait_rows(accepted, timeout=600)
            drained_at = time.monotonic()
            exit_code = sf.stop()
            distinct = sf.count("select count(distinct event_id) from page_views")
            rows = sf.count()
        finally:
            sf.kill()
    line = {
        "benchmark": "shardflow_run_end_to_end",
        "unit": "events/s",
        "shardflow": round((end_rows - warm_rows) / (end_at - warm_at)),
        "accepted_per_s": round(accepted / (end_at - started)),
        "all_loaded_per_s": round(accepted / (drained_at - started)),
        "accepted": accepted,
        "rows": rows,
        "loaded_exactly_once": distinct == accepted == rows,
        "exit_code": exit_code,
        "workers": args.workers,
    }
    print(orjson.dumps(line).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
