"""Helpers shared by the monitoring tests: read the dashboard and alert files, pull metric names out
of PromQL, substitute Grafana variables, and list what service/metrics.py exports.

Why here and not in docker/: these are test oracles, deliberately independent of the generator.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "docker" / "grafana" / "dashboards"
ALERTS_FILE = ROOT / "docker" / "prometheus" / "alerts.yml"
ALERT_TESTS_FILE = ROOT / "docker" / "prometheus" / "tests" / "alerts_test.yml"

#: Grafana's built-in interval variables, as the tests evaluate them (scrape interval 1 s there)
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
#: metrics Prometheus makes itself; alerts may use them, dashboards may not
PROMETHEUS_SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring",
                       "group_left", "group_right"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and grouping removed)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = {m.group(1) for m in _IDENT.finditer(text)}
    return {n for n in names if n.lower() not in _KEYWORDS}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool


def load_dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboards in {DASHBOARD_DIR}")
    return {f.name: json.loads(f.read_text()) for f in files}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel including those nested in (collapsed) rows."""
    return _panels(dashboard.get("panels", []))


def panel_queries(name: str, dashboard: dict[str, Any]) -> list[PanelQuery]:
    queries = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            expr = target.get("expr") or ""
            if expr:
                queries.append(PanelQuery(name, panel.get("title", "?"), target.get("refId", "?"), expr,
                                          bool(target.get("instant"))))
    return queries


def template_variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<metric>[^,]+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$")


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(metric, label)` -> (metric, label); ValueError for other variable queries."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"unsupported variable query {query!r} (only label_values(...))")
    return match.group("metric"), match.group("label")


_REGEX_SPECIAL = re.compile(r"([$^*{}\[\]'+?.()|])")


def grafana_regex_escape(value: str) -> str:
    """Grafana's Prometheus escaping of a variable value inside a regex matcher: a special character
    gets two backslashes in the query text (one for the PromQL string, one for the regex)."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", value.replace("\\", "\\\\\\\\"))


def substitute(expr: str, variables: dict[str, list[str]]) -> str:
    """Replace Grafana variables as Grafana does for a multi-value variable in a regex matcher."""
    for key, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(key, value)
    for name in sorted(variables, key=len, reverse=True):
        values = variables[name]
        rendered = (grafana_regex_escape(values[0]) if len(values) == 1
                    else "(" + "|".join(grafana_regex_escape(v) for v in values) + ")")
        expr = expr.replace("${" + name + "}", rendered).replace("$" + name, rendered)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable left in {expr!r}")
    return expr


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS_FILE.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def is_gpu_query(expr: str) -> bool:
    """A query over Triton's GPU series only (service/gpu_metrics.py): absent on machines without a GPU."""
    names = metric_names(expr)
    return bool(names) and all(name.startswith("nv_gpu_") for name in names)


def exported_sample_names() -> set[str]:
    """Every sample name service/metrics.py and service/gpu_metrics.py can expose (histogram/counter
    suffixes expanded)."""
    from service.gpu_metrics import METRIC_NAMES
    from service.metrics import Metrics

    names: set[str] = set(METRIC_NAMES)
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names
