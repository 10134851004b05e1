"""The Grafana dashboard and the Prometheus alerts use only metrics that shardflow really exposes.

Names are read from the dashboard's and the rules' PromQL, then looked up in a real scrape: the
Prometheus text that `processor.metrics` produces, and `/metrics` of a running front end over HTTP.
Counters are exposed as `<name>_total`, histograms as `<name>_bucket/_sum/_count`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import REGISTRY, generate_latest

import processor.metrics  # noqa: F401  (registers every metric in the default registry)
from tests.deploy.promql import (
    ALERTS,
    DASHBOARD,
    METRIC,
    alert_rules,
    dashboard_exprs,
    exposed_series,
    used_metrics,
)

SPEC_METRICS = {
    "shardflow_ingest_events_total",
    "shardflow_ingest_request_seconds_bucket",
    "shardflow_buffer_events",
    "shardflow_spool_bytes",
    "shardflow_put_records_total",
    "shardflow_consumer_records_total",
    "shardflow_consumer_millis_behind_latest",
    "shardflow_sink_rows_total",
    "shardflow_sink_commit_seconds_bucket",
    "shardflow_leases_held",
    "shardflow_dead_letters_total",
}
"""SPEC "Metrics" as series names; the dashboard shows every one of them."""


def test_dashboard_and_alerts_use_only_registered_metrics() -> None:
    exposed = exposed_series(generate_latest(REGISTRY).decode())
    missing = {name: sorted(where) for name, where in used_metrics().items() if name not in exposed}
    assert not missing, f"used but not exposed by processor.metrics: {missing}"


def test_dashboard_shows_every_spec_metric() -> None:
    shown = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert shown >= SPEC_METRICS, f"not on the dashboard: {sorted(SPEC_METRICS - shown)}"


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "shardflow" and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", "queries go to the chosen Prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"


def test_alerts_cover_the_faults_an_operator_must_hear_about() -> None:
    rules = alert_rules()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    by_metric = used_metrics()
    for metric in (
        "shardflow_consumer_millis_behind_latest",
        "shardflow_spool_bytes",
        "shardflow_dead_letters_total",
        "shardflow_put_records_total",
        "shardflow_warehouse_up",
    ):
        assert by_metric.get(metric, set()) - {"dashboard"}, f"no alert on {metric}"


def test_promql_parses_with_promtool(tmp_path: Path) -> None:
    """promtool (Debian package `prometheus`) parses every query; skipped where it is not installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    records = [
        {"record": f"shardflow:panel_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_exprs())
    ]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_front_end_metrics_endpoint_exposes_what_the_dashboard_uses(tmp_path: Path) -> None:
    """A real front end on a loopback port, scraped over HTTP as Prometheus would."""
    server = pytest.importorskip("processor.ingest.server", reason="the front end has not landed yet")
    embedded = pytest.importorskip("processor.streams.embedded", reason="the embedded stream has not landed")
    from processor.ingest.config import IngestConfig

    config = IngestConfig(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool", drain_timeout=1.0)
    stream = embedded.EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    async with server.FrontEnd(config, stream) as front_end, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{front_end.port}/metrics"
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            text = await answer.text()
    exposed = exposed_series(text)
    used = used_metrics()
    # The front end's own series must be there; consumer series are exposed by consumer processes.
    front_end_metrics = {name for name in used if name.startswith(("shardflow_ingest", "shardflow_buffer"))}
    front_end_metrics |= {"shardflow_spool_bytes", "shardflow_put_records_total"}
    missing = sorted(front_end_metrics - exposed)
    assert not missing, f"/metrics of the front end lacks {missing}"


def _alert_case(name: str, series: dict[str, str], at: str, fires: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": f} for f in fires]}
        ],
    }


ALERT_CASES = [
    _alert_case(
        "ShardflowWarehouseDown",
        {'shardflow_warehouse_up{instance="c1"}': "1 1 0 0 0 0 0"},
        "6m",
        [{"severity": "critical", "instance": "c1"}],
    ),
    _alert_case("ShardflowWarehouseDown", {'shardflow_warehouse_up{instance="c1"}': "1x10"}, "10m", []),
    _alert_case(
        "ShardflowLagGrowing",
        {'shardflow_consumer_millis_behind_latest{shard_id="s1"}': "0+10000x40"},
        "40m",
        [{"severity": "warning", "shard_id": "s1"}],
    ),
    _alert_case(
        "ShardflowLagGrowing",
        {'shardflow_consumer_millis_behind_latest{shard_id="s1"}': "120000x40"},
        "40m",
        [],
    ),
    _alert_case(
        "ShardflowSpoolFilling",
        {'shardflow_spool_bytes{instance="f1"}': "0+10485760x30"},
        "30m",
        [{"severity": "warning", "instance": "f1"}],
    ),
    _alert_case(
        "ShardflowPutFailures",
        {
            'shardflow_put_records_total{instance="f1",result="failed"}': "0+10x15",
            'shardflow_put_records_total{instance="f1",result="ok"}': "0+1000x15",
        },
        "15m",
        [{"severity": "warning", "instance": "f1"}],
    ),
    _alert_case(
        "ShardflowDeadLettersRising",
        {
            'shardflow_ingest_events_total{result="accepted"}': "0+1000x30",
            'shardflow_dead_letters_total{stage="ingest"}': "0+50x30",
        },
        "30m",
        [{"severity": "warning", "stage": "ingest"}],
    ),
    _alert_case(
        "ShardflowDeadLettersRising",
        {
            'shardflow_ingest_events_total{result="accepted"}': "0+1000x30",
            'shardflow_dead_letters_total{stage="ingest"}': "0+5x30",
        },
        "30m",
        [],
    ),
    _alert_case(
        "ShardflowNoLeases",
        {'shardflow_leases_held{instance="c1"}': "0x10"},
        "10m",
        [{"severity": "critical"}],
    ),
]
"""Synthetic series under which each alert must fire, or must stay quiet."""


def test_alerts_fire_on_the_faults_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    """promtool's rule unit tests over synthetic series; annotations are left out of the comparison."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": ALERT_CASES}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    run = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
