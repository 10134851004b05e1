"""`python -m tests.soak --minutes 3 [--seed N] [--stream kinesis|embedded] [--warehouse postgres|mysql]`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.soak.scenario import Options, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of load (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds of load (overrides --minutes)")
    parser.add_argument("--seed", type=int, help="fault schedule seed (default: from the clock, printed)")
    parser.add_argument("--stream", choices=("kinesis", "embedded"), default="kinesis")
    parser.add_argument("--warehouse", choices=("postgres", "mysql"), default="postgres")
    parser.add_argument("--rate", type=float, default=300.0, help="events per second (default 300)")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to drain after the load")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds a drained graceful stop may take (default 30)",
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir even when the run passes")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"shardflow-soak-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = Options(
        seconds=args.seconds if args.seconds is not None else args.minutes * 60,
        seed=seed,
        stream=args.stream,
        warehouse=args.warehouse,
        rate=args.rate,
        workdir=workdir.resolve(),
        drain_timeout=args.drain_timeout,
        stop_timeout=args.stop_timeout,
    )
    code = run(opts)
    if code == 0 and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and data kept in {workdir}")
    print(f"reproduce: python -m tests.soak --seconds {opts.seconds:g} --seed {seed} --stream {args.stream} "
          f"--warehouse {args.warehouse} --rate {args.rate:g}")  # fmt: skip
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
