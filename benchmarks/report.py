"""`make bench-report`: benchmarks/results/latest.jsonl -> benchmarks/report.md and benchmarks/report.png.

    python -m benchmarks.report [--input results.jsonl] [--output report.md]

The table shows every figure beside its limit and peers and where it stands against the targets
of issue 7; the chart (matplotlib, Agg) shows events/s per stage beside its limit; the latency
section shows ingest request percentiles with a healthy and with a stalled stream.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
Line = dict[str, Any]


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[Line], bool]


def _ratio(key: str, floor: float) -> Callable[[Line], bool]:
    return lambda line: isinstance(line.get(key), int | float) and line[key] >= floor


TARGETS: dict[str, Target] = {
    "ingest_single": Target("≥ 0.6 of bare aiohttp", _ratio("ratio_limit", 0.6)),
    "ingest_batch": Target("≥ 0.6 of bare aiohttp", _ratio("ratio_limit", 0.6)),
    "stream_put": Target(
        "≥ 1.5x async_kinesis, ≥ 15x naive",
        lambda x: _ratio("ratio_async_kinesis", 1.5)(x) and _ratio("ratio_naive", 15)(x),
    ),
    "stream_read": Target("≥ 1.5x async_kinesis", _ratio("ratio_async_kinesis", 1.5)),
    "stream_put_aggregated": Target("≥ 1.5x async_kinesis", _ratio("ratio_async_kinesis", 1.5)),
    "stream_read_aggregated": Target("≥ 1.5x async_kinesis", _ratio("ratio_async_kinesis", 1.5)),
    "sink_postgres": Target("≥ 0.7 of binary COPY", _ratio("ratio_limit", 0.7)),
    "sink_mysql": Target("≥ 0.7 of LOAD DATA LOCAL", _ratio("ratio_limit", 0.7)),
    "consume": Target("≥ 0.5 of COPY", _ratio("ratio_limit", 0.5)),
    "end_to_end": Target(
        "≥ 0.35 of COPY and ≥ 20,000/s",
        lambda x: _ratio("ratio_limit", 0.35)(x) and _ratio("shardflow", 20_000)(x),
    ),
}
ORDER = (
    "ingest_single",
    "ingest_batch",
    "ingest_stalled",
    "stream_put",
    "stream_read",
    "stream_put_aggregated",
    "stream_read_aggregated",
    "consume",
    "sink_postgres",
    "sink_mysql",
    "end_to_end",
    "end_to_end_kinesis",
    "leases_scale",
)
FIXED = ("benchmark", "unit", "shardflow", "limit", "ratio_limit")


def read_lines(path: Path) -> list[Line]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.strip():
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict) and "benchmark" in parsed:
                lines.append(parsed)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(lines, key=lambda line: rank.get(str(line["benchmark"]), len(ORDER)))


def _num(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def peers_of(line: Line) -> list[str]:
    return [
        k[len("ratio_") :] for k in line if k.startswith("ratio_") and k != "ratio_limit" and k[6:] in line
    ]


def _rss(line: Line) -> str:
    rss = line.get("rss_mb")
    if isinstance(rss, dict):
        return ", ".join(f"{k} {_num(v)}" for k, v in rss.items())
    return _num(rss)


def table(lines: Sequence[Line]) -> str:
    out = [
        "| benchmark | shardflow (events/s) | limit | ratio | peers | target | met | peak RSS (MiB) |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for line in lines:
        name = str(line["benchmark"])
        peers = "; ".join(f"{p} {_num(line[p])} (x{_num(line['ratio_' + p])})" for p in peers_of(line))
        target = TARGETS.get(name)
        if "error" in line:
            met = "error: " + str(line["error"]).replace("|", "/").replace("\n", " ")[:160]
        elif target is None:
            met = "—"
        else:
            met = "yes" if target.met(line) else "**no**"
        out.append(
            f"| {name} | {_num(line.get('shardflow'))} | {_num(line.get('limit'))} | "
            f"{_num(line.get('ratio_limit'))} | {peers or '—'} | {target.text if target else '—'} | {met} | "
            f"{_rss(line)} |"
        )
    return "\n".join(out)


def latency_section(lines: Sequence[Line]) -> str:
    stalled = next((x for x in lines if x["benchmark"] == "ingest_stalled" and "error" not in x), None)
    if stalled is None:
        return "No `ingest_stalled` figure in this run."
    rows = [
        "| stream | p50 ms | p90 ms | p99 ms | max ms | accepted events/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    latency = stalled.get("latency_ms", {})
    for phase, rate in (("healthy", stalled.get("limit")), ("stalled", stalled.get("shardflow"))):
        p = latency.get(phase, {})
        rows.append(
            f"| {phase} | {_num(p.get('p50'))} | {_num(p.get('p90'))} | {_num(p.get('p99'))} | "
            f"{_num(p.get('max'))} | {_num(rate)} |"
        )
    offered = stalled.get("offered_per_s")
    return f"Offered load: {_num(offered)} events/s in 100-event NDJSON requests.\n\n" + "\n".join(rows)


def end_to_end_section(lines: Sequence[Line]) -> str:
    keys = ("accepted_per_s", "max_backlog", "max_backlog_s", "lag_bounded", "exactly_once", "window_s")
    rows = ["| benchmark | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    rows.extend(
        f"| {line['benchmark']} | " + " | ".join(str(line.get(k, "—")) for k in keys) + " |"
        for line in lines
        if str(line["benchmark"]).startswith("end_to_end") and "error" not in line
    )
    return "\n".join(rows) if len(rows) > 2 else "No end-to-end figure in this run."


def chart(lines: Sequence[Line], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [x for x in lines if "error" not in x and isinstance(x.get("shardflow"), int | float)]
    names = [str(x["benchmark"]) for x in good]
    fig, ax = plt.subplots(figsize=(10, 0.5 * max(len(good), 2) + 1.5))
    ys = range(len(good))
    ax.barh(
        [y + 0.2 for y in ys], [x["shardflow"] for x in good], height=0.4, label="shardflow", color="#2b7bba"
    )
    ax.barh(
        [y - 0.2 for y in ys], [x["limit"] or 0 for x in good], height=0.4, label="limit", color="#bbbbbb"
    )
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("events/s (log scale)")
    ax.set_title("shardflow per stage beside its limit")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(lines: Sequence[Line], png_name: str, source: Path) -> str:
    when = dt.datetime.fromtimestamp(source.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# shardflow benchmark report",
            "",
            f"From `{source.name}` ({when}). How each figure is measured: `benchmarks/README.md`.",
            "",
            "## Figures and targets",
            "",
            table(lines),
            "",
            f"![events/s per stage beside its limit]({png_name})",
            "",
            "## End to end",
            "",
            end_to_end_section(lines),
            "",
            "## Ingest latency, healthy and stalled stream",
            "",
            latency_section(lines),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("--input", type=Path, default=HERE / "results" / "latest.jsonl")
    parser.add_argument("--output", type=Path, default=HERE / "report.md")
    args = parser.parse_args(argv)
    if not args.input.exists():
        parser.error(f"{args.input} not found: run `make bench` (or `make bench-quick`) first")
    lines = read_lines(args.input)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    png = args.output.with_suffix(".png")
    chart(lines, png)
    args.output.write_text(render(lines, png.name, args.input))
    print(f"{args.output} and {png} from {len(lines)} figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
