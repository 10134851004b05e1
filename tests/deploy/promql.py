"""Metric names in PromQL (dashboard, alert rules) and in Prometheus text (a scrape), for the deploy tests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "shardflow.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

METRIC = re.compile(r"\b(shardflow_[a-z0-9_]+)\b")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def exposed_series(text: str) -> set[str]:
    """Every series name a scrape of this Prometheus text can return, labelled children or not."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def dashboard_exprs() -> list[str]:
    return list(_exprs(json.loads(DASHBOARD.read_text())))


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        rules.extend(group["rules"])
    return rules


def used_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used ("dashboard", or the alert's name)."""
    used: dict[str, set[str]] = {}
    for expr in dashboard_exprs():
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add("dashboard")
    for rule in alert_rules():
        for name in METRIC.findall(rule["expr"]):
            used.setdefault(name, set()).add(rule["alert"])
    return used
