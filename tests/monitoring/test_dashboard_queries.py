"""The proof that the Grafana dashboards work: a real vitserve on a demo repository, a real Prometheus
scraping it every second, traffic to every model (including client errors), then EVERY PromQL
expression of EVERY dashboard panel evaluated through Prometheus' HTTP API must return data — for all
models selected and for each model alone — and no panel may name a metric the service does not export.
The alert rules are loaded into the same Prometheus and must evaluate without error.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from monitoring_promql import (
    ALERTS_FILE,
    PanelQuery,
    alert_rules,
    exported_sample_names,
    is_gpu_query,
    load_dashboards,
    metric_names,
    panel_queries,
    parse_label_values,
    substitute,
    template_variables,
)
from monitoring_support import require_tool, running_process
from PIL import Image

from bench.procs import free_port

pytestmark = pytest.mark.timeout(600)

#: how long traffic may keep flowing until every panel has data (several scrapes at 1 s)
DATA_DEADLINE_S = 120.0
CONCURRENCY = 6


@dataclass(frozen=True)
class Prometheus:
    url: str

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10.0)
        body = response.json()
        assert response.status_code == 200 and body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: result type {data['resultType']}"
        return list(data["result"])


@pytest.fixture(scope="module")
def prometheus(live_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """The Debian `prometheus` binary on a free loopback port, scraping live_service every second."""
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    target = live_service.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(ALERTS_FILE)],
        "scrape_configs": [{"job_name": "vitserve", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    cmd = [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]
    with running_process(cmd, log, f"{url}/-/ready", what="prometheus", ready_s=60.0, stop_s=20):
        yield Prometheus(url)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96 + seed % 7, 80), ((seed * 37) % 256, (seed * 91) % 256, 128)).save(buffer, "PNG")
    return buffer.getvalue()


async def _traffic_round(base_url: str, models: list[str], round_no: int) -> dict[int, int]:
    """Concurrent classifies to every model (so batches form), plus 400s and a 404: status counts."""
    statuses: dict[int, int] = {}

    async def call(client: httpx.AsyncClient, model: str, payload: bytes) -> None:
        response = await client.post(f"/v1/models/{model}/classify", files={"image": ("x.png", payload, "image/png")})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as client:
        calls = [call(client, m, _png(round_no * 100 + i)) for m in models for i in range(CONCURRENCY)]
        calls += [call(client, m, b"this is not an image") for m in models]
        calls.append(call(client, "no-such-model", _png(round_no)))
        await asyncio.gather(*calls)
    return statuses


def _has_finite_sample(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def _evaluate(prometheus: Prometheus, queries: list[PanelQuery], selections: list[list[str]]) -> list[str]:
    """Problems left: every query x every model selection must give at least one finite sample."""
    problems = []
    for query in queries:
        for selection in selections:
            expr = substitute(query.expr, {"model": selection})
            result = prometheus.query(expr)
            if not result:
                problems.append(f"[{query.dashboard}] {query.panel!r} {query.ref_id} model={selection}: empty: {expr}")
            elif not _has_finite_sample(result):
                problems.append(f"[{query.dashboard}] {query.panel!r} {query.ref_id} model={selection}: only NaN")
    return problems


def _model_values(prometheus: Prometheus, dashboard: dict[str, Any]) -> list[str]:
    """Resolve the dashboard's `model` variable the way Grafana does (label_values -> label API)."""
    (variable,) = [v for v in template_variables(dashboard) if v["name"] == "model"]
    metric, label = parse_label_values(variable["query"])
    params = {"match[]": metric} if metric else {}
    values = prometheus.get(f"/api/v1/label/{label}/values", **params)
    return sorted(values)


def _scraped_sample_names(base_url: str) -> set[str]:
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def test_every_dashboard_query_returns_data_from_a_real_prometheus(live_service: Any, prometheus: Prometheus) -> None:
    dashboards = load_dashboards()
    queries = [q for name, dashboard in dashboards.items() for q in panel_queries(name, dashboard)]
    assert queries, "dashboards have no queries"
    gpu_queries: list[PanelQuery] = []
    if not any(n.startswith("nv_gpu_") for n in _scraped_sample_names(live_service.base_url)):
        # no GPU here: its panels must be empty (series absent, never a misleading 0), the rest must have data
        gpu_queries = [q for q in queries if is_gpu_query(q.expr)]
        queries = [q for q in queries if not is_gpu_query(q.expr)]
        assert gpu_queries, "the dashboard has no GPU panels"

    # Prometheus scrapes the service
    wait_until = time.monotonic() + 30
    while time.monotonic() < wait_until and not prometheus.query('up{job="vitserve"} == 1'):
        time.sleep(0.5)
    assert prometheus.query('up{job="vitserve"} == 1'), prometheus.get("/api/v1/targets")

    statuses: dict[int, int] = {}
    problems: list[str] = ["no traffic yet"]
    deadline = time.monotonic() + DATA_DEADLINE_S
    round_no = 0
    while problems and time.monotonic() < deadline:
        for code, count in asyncio.run(_traffic_round(live_service.base_url, live_service.models, round_no)).items():
            statuses[code] = statuses.get(code, 0) + count
        round_no += 1
        time.sleep(1.5)  # at least one scrape between rounds: rates see increments, not one sample
        if round_no < 3:
            continue
        selections: list[list[str]] = []
        for dashboard in dashboards.values():
            values = _model_values(prometheus, dashboard)
            selections = [values] + [[value] for value in values]
        problems = _evaluate(prometheus, queries, selections)

    assert statuses.get(200, 0) > 0 and any(400 <= code < 500 for code in statuses), statuses
    assert not problems, f"after {round_no} rounds of traffic ({statuses}):\n" + "\n".join(problems)
    for query in gpu_queries:
        assert prometheus.query(query.expr) == [], f"{query.panel}: GPU series without a GPU: {query.expr}"
    # the variable lists exactly the served models
    for dashboard in dashboards.values():
        assert _model_values(prometheus, dashboard) == sorted(live_service.models)


def test_no_panel_queries_a_metric_the_service_does_not_export(live_service: Any) -> None:
    # Request-driven series (histogram buckets, error counters) exist only once a request was recorded:
    # send one round of traffic here rather than rely on another test having run first.
    statuses = asyncio.run(_traffic_round(live_service.base_url, live_service.models, round_no=0))
    assert statuses.get(200), statuses
    queries = [q for name, dashboard in load_dashboards().items() for q in panel_queries(name, dashboard)]
    # GPU panels' series are absent without a GPU (checked below), so they are not waited for
    wanted = set().union(*(metric_names(q.expr) for q in queries if not is_gpu_query(q.expr)))
    deadline = time.monotonic() + 30  # a response can reach the client before its metrics are recorded
    scraped = _scraped_sample_names(live_service.base_url)
    while not wanted <= scraped and time.monotonic() < deadline:
        time.sleep(0.2)
        scraped = _scraped_sample_names(live_service.base_url)
    declared = exported_sample_names()
    has_gpu = any(n.startswith("nv_gpu_") for n in scraped)
    for query in queries:
        names = metric_names(query.expr)
        assert names, f"{query.panel}: no metric found in {query.expr}"
        assert names <= declared, f"{query.panel}: not in service/metrics.py: {sorted(names - declared)}"
        if is_gpu_query(query.expr) and not has_gpu:
            assert not names & scraped  # absent without a GPU, not zero
            continue
        assert names <= scraped, f"{query.panel}: not on /metrics: {sorted(names - scraped)}"


def test_alert_rules_load_and_evaluate_in_prometheus(prometheus: Prometheus) -> None:
    expected = {rule["alert"] for rule in alert_rules()}
    deadline = time.monotonic() + 30
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        groups = prometheus.get("/api/v1/rules")["groups"]
        seen = {rule["name"]: rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
        if set(seen) == expected and all(rule.get("health") == "ok" for rule in seen.values()):
            break
        time.sleep(0.5)
    assert set(seen) == expected
    unhealthy = {name: rule.get("lastError") for name, rule in seen.items() if rule.get("health") != "ok"}
    assert not unhealthy, unhealthy
    # a healthy demo server trips none of them
    firing = [a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing


def test_a_panel_query_without_data_is_reported(live_service: Any, prometheus: Prometheus) -> None:
    """The checker itself: a query for a metric nobody exports, or a model nobody serves, is a problem."""
    bogus = PanelQuery("test", "bogus", "Z", 'sum by (model) (rate(vitserve_no_such_total{model=~"$model"}[1m]))',
                       instant=False)
    wrong_model = PanelQuery("test", "wrong model", "Y", 'vitserve_model_ready{model=~"$model"}', instant=True)
    problems = _evaluate(prometheus, [bogus, wrong_model], [["not-a-served-model"]])
    assert len(problems) == 2 and all("empty" in p for p in problems)
