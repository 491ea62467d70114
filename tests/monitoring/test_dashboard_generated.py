"""The Grafana dashboard JSON: generated from docker/grafana/generate.py, well-formed for Grafana's
provisioning, covering every question issue 4 asks, and naming only metrics service/metrics.py exports.
(test_dashboard_queries.py proves the queries return data against a real Prometheus.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from itertools import combinations
from typing import Any

import pytest
import yaml
from monitoring_promql import (
    DASHBOARD_DIR,
    all_panels,
    exported_sample_names,
    is_gpu_query,
    load_dashboards,
    metric_names,
    panel_queries,
    parse_label_values,
    substitute,
    template_variables,
)
from monitoring_support import DOCKER_DIR, in_ci

GENERATOR = DOCKER_DIR / "grafana" / "generate.py"
DATASOURCES = DOCKER_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DOCKER_DIR / "grafana" / "provisioning" / "dashboards" / "vitserve.yml"


def _needs_grafanalib() -> None:
    if importlib.util.find_spec("grafanalib") is None:
        if in_ci():
            pytest.fail("grafanalib missing (dev extra); CI=true requires it")
        pytest.skip("grafanalib not installed (pip install -e '.[dev]')")


def test_committed_dashboard_json_is_what_the_generator_writes() -> None:
    _needs_grafanalib()
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_generator_check_notices_a_stale_file(tmp_path: Any) -> None:
    _needs_grafanalib()
    stale = tmp_path / "vitserve.json"
    stale.write_text((DASHBOARD_DIR / "vitserve.json").read_text().replace("p99", "p98", 1))
    result = subprocess.run([sys.executable, str(GENERATOR), "--check", "--output", str(stale)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "stale" in result.stderr


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def test_panels_use_the_provisioned_datasource(dashboards: dict[str, dict[str, Any]]) -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {ds["uid"] for ds in provisioned if ds["type"] == "prometheus"}
    for dashboard in dashboards.values():
        for panel in all_panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, (panel["title"], target["refId"])


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboards: dict[str, dict[str, Any]]) -> None:
    for dashboard in dashboards.values():
        panels = all_panels(dashboard)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        boxes = [(p["title"], p["gridPos"]) for p in panels]
        for _, pos in boxes:
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
        for (t1, a), (t2, b) in combinations(boxes, 2):
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"panels {t1!r} and {t2!r} overlap"


def test_model_variable_picks_models_and_every_query_honours_it(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, dashboard in dashboards.items():
        variables = {v["name"]: v for v in template_variables(dashboard)}
        model = variables["model"]
        assert model["multi"] and model["includeAll"]
        metric, label = parse_label_values(model["query"])
        assert label == "model" and metric in exported_sample_names()
        for query in panel_queries(name, dashboard):
            if is_gpu_query(query.expr):  # per device (gpu_uuid), shared by every model
                continue
            assert 'model=~"$model"' in query.expr, f"{query.panel} {query.ref_id} ignores $model"
            substitute(query.expr, {"model": ["a", "b"]})  # nothing else left to fill in


def test_no_panel_names_a_metric_missing_from_service_metrics(dashboards: dict[str, dict[str, Any]]) -> None:
    exported = exported_sample_names()
    for name, dashboard in dashboards.items():
        for query in panel_queries(name, dashboard):
            names = metric_names(query.expr)
            assert names and names <= exported, f"{query.panel}: {sorted(names - exported)}"


def test_dashboard_answers_what_issue_4_asks(dashboards: dict[str, dict[str, Any]]) -> None:
    """Latency quantiles from the histogram, throughput, batch sizes, queue, FLOPs, errors, readiness."""
    exprs = [q.expr for name, d in dashboards.items() for q in panel_queries(name, d)]
    joined = "\n".join(exprs)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (model, le) (rate(vitserve_request_duration_seconds_bucket" in joined
    required = {
        "requests/s": "rate(vitserve_requests_total",
        "images/s": "rate(vitserve_inferences_total",
        "batch-size distribution": "vitserve_batch_size_bucket",
        "queue depth": "vitserve_queue_depth",
        "queue time": "vitserve_queue_duration_seconds_bucket",
        "FLOPs per image": "vitserve_model_flops",
        "achieved GFLOP/s": "rate(vitserve_flops_total",
        "error rate by status": 'code!~"2.."',
        "readiness and provider": "(model, version, provider) (vitserve_model_ready",
    }
    required |= {"GPU utilisation": "nv_gpu_utilization", "GPU memory": "nv_gpu_memory_used_bytes",
                 "GPU memory total": "nv_gpu_memory_total_bytes", "GPU power": "nv_gpu_power_usage"}
    missing = [what for what, needle in required.items() if needle not in joined]
    assert not missing, missing
    heatmaps = [p for d in dashboards.values() for p in all_panels(d) if p["type"] == "heatmap"]
    assert any(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])


def test_grafana_provider_loads_the_dashboard_folder_compose_mounts() -> None:
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    compose = yaml.safe_load((DOCKER_DIR.parent / "docker-compose.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"]
                  if v.startswith("./"))
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model, le) (rate(a_bucket{model=~"$model", code=~"2.."}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum without (pod) (rate(b_bucket[1m]))) > 1", {"b_bucket"}),
        ("max by (model) (c) / on (model) group_left max by (model) (d) > bool 0.8", {"c", "d"}),
        ("sum(rate(e_total[1m])) / 1e9 and up offset 5m", {"e_total", "up"}),
        ('label_replace(f, "x", "$1", "y", "(.*)")', {"f"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_grafana_regex_escaping_of_variable_values() -> None:
    assert (substitute('m{model=~"$model"}', {"model": ["vit.small", "demo-cb"]})
            == 'm{model=~"(vit\\\\.small|demo-cb)"}')
    assert substitute("rate(m[$__rate_interval])", {}) == "rate(m[1m])"
    with pytest.raises(ValueError, match="unsubstituted"):
        substitute('m{x="$other"}', {"model": ["a"]})
