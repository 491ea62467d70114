#!/usr/bin/env python3
"""Wrap docker/prometheus/alerts.yml into a prometheus-operator PrometheusRule for Kubernetes.

Why generated: alerts.yml is the one source of the rules (promtool checks and unit-tests it, compose
mounts it); the operator wants the same groups inside a custom resource. This writes
docker/k8s/monitoring/prometheusrule.yaml; `--check` fails when that file is stale (CI runs it).

    python docker/prometheus/prometheusrule.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
OUTPUT = HERE.parent / "k8s" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from docker/prometheus/alerts.yml by docker/prometheus/prometheusrule.py: edit those, not this.\n"
    "# The alert rules for clusters running the prometheus-operator (applied with docker/k8s/monitoring).\n"
)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule resource carrying `alerts`' groups unchanged."""
    if not isinstance(alerts, dict) or not isinstance(alerts.get("groups"), list):
        raise ValueError("alerts file must have a top-level 'groups' list")
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "vitserve",
            "labels": {
                "app.kubernetes.io/name": "vitserve",
                "release": "kube-prometheus-stack",  # match your Prometheus' ruleSelector
            },
        },
        "spec": {"groups": alerts["groups"]},
    }


class _Literal(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, so the file stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Literal.add_representer(str, _str)


def render(alerts_path: Path = ALERTS) -> str:
    rule = prometheus_rule(yaml.safe_load(alerts_path.read_text()))
    return HEADER + yaml.dump(rule, Dumper=_Literal, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python docker/prometheus/prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
