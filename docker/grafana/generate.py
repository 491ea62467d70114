"""Generate the vitserve Grafana dashboard (docker/grafana/dashboards/vitserve.json) with grafanalib.

Why generated: one panel per question an operator asks (how slow, how busy, how well batched, how
close to overload, how many FLOPs really executed, what fails, what is loaded where, how busy the
GPU is), written as
code so every PromQL expression sits in one reviewable place. The committed JSON is what Grafana
provisions; tests/monitoring/test_dashboard_generated.py fails when it drifts from this file, and
tests/monitoring/test_dashboard_queries.py runs every expression against a real Prometheus
scraping a real vitserve.

    python docker/grafana/generate.py            # rewrite the JSON
    python docker/grafana/generate.py --check    # exit 1 if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    BarGauge,
    Dashboard,
    GridPos,
    Heatmap,
    RowPanel,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "vitserve.json"
DASHBOARD_UID = "vitserve-overview"
#: the provisioned datasource (docker/grafana/provisioning/datasources/prometheus.yml) has this uid
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "prometheus"}
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _target(expr: str, legend: str, ref: str = "A", *, instant: bool = False, fmt: str = "time_series") -> Target:
    return Target(
        expr=expr, legendFormat=legend, refId=ref, instant=instant, format=fmt, datasource=DATASOURCE
    )


def _quantile(q: float, histogram: str, by: str = "model", selector: str = MODEL) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{selector}}}[{RATE}])))"


def _timeseries(title: str, targets: list[Target], pos: GridPos, unit: str, description: str) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=pos,
        unit=unit,
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
    )


def _latency_row(y: int) -> list[Any]:
    panels: list[Any] = [RowPanel(title="Latency (end to end, successful requests)", gridPos=GridPos(h=1, w=24, x=0, y=y))]
    for i, (name, q) in enumerate(QUANTILES):
        panels.append(
            _timeseries(
                f"Request latency {name} by model",
                [_target(_quantile(q, "vitserve_request_duration_seconds", selector=f'{MODEL}, code=~"2.."'),
                         "{{model}}")],
                GridPos(h=8, w=8, x=8 * i, y=y + 1),
                "s",
                f"{name} of vitserve_request_duration_seconds per model variant (2xx only), from the histogram.",
            )
        )
    stages = [
        ("queue", "vitserve_queue_duration_seconds"),
        ("preprocess", "vitserve_preprocess_duration_seconds"),
        ("compute", "vitserve_compute_duration_seconds"),
    ]
    panels.append(
        _timeseries(
            "Where the time goes: p95 per stage",
            [_target(_quantile(0.95, metric), f"{{{{model}}}} {stage}", chr(ord("A") + i))
             for i, (stage, metric) in enumerate(stages)],
            GridPos(h=8, w=12, x=0, y=y + 9),
            "s",
            "p95 of queueing, preprocessing (decode/resize/normalise) and compute (ONNX Runtime batch run).",
        )
    )
    panels.append(
        _timeseries(
            "Queue time p50/p95/p99",
            [_target(_quantile(q, "vitserve_queue_duration_seconds"), f"{{{{model}}}} {name}", chr(ord("A") + i))
             for i, (name, q) in enumerate(QUANTILES)],
            GridPos(h=8, w=12, x=12, y=y + 9),
            "s",
            "Time requests wait in the batcher's queue before their batch starts.",
        )
    )
    return panels


def _throughput_row(y: int) -> list[Any]:
    return [
        RowPanel(title="Throughput", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        _timeseries(
            "Requests/s by model, protocol and status",
            [_target(f"sum by (model, protocol, code) (rate(vitserve_requests_total{{{MODEL}}}[{RATE}]))",
                     "{{model}} {{protocol}} {{code}}")],
            GridPos(h=8, w=8, x=0, y=y + 1),
            "reqps",
            "All requests that named a model, by protocol (http: REST; grpc: the KServe v2 / Triton gRPC endpoint) "
            "and status (a gRPC answer counts under the HTTP status REST gives the same outcome).",
        ),
        _timeseries(
            "Images/s by model",
            [_target(f"sum by (model) (rate(vitserve_inferences_total{{{MODEL}}}[{RATE}]))", "{{model}}")],
            GridPos(h=8, w=8, x=8, y=y + 1),
            "none",
            "Images run through the model (one request may carry several on /v2 infer).",
        ),
        _timeseries(
            "Achieved GFLOP/s by model",
            [_target(f"sum by (model) (rate(vitserve_flops_total{{{MODEL}}}[{RATE}])) / 1e9", "{{model}}")],
            GridPos(h=8, w=8, x=16, y=y + 1),
            "none",
            "FLOPs executed per second (rate of vitserve_flops_total; per-image FLOPs are counted on the ONNX graph).",
        ),
    ]


def _batching_row(y: int) -> list[Any]:
    return [
        RowPanel(title="Batching and queue", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        Heatmap(
            title="Batch size distribution",
            description="How many requests each dispatched batch held (vitserve_batch_size histogram).",
            dataSource=DATASOURCE,
            targets=[_target(f"sum by (le) (increase(vitserve_batch_size_bucket{{{MODEL}}}[{RATE}]))",
                             "{{le}}", fmt="heatmap")],
            gridPos=GridPos(h=8, w=8, x=0, y=y + 1),
            dataFormat="tsbuckets",
            hideZeroBuckets=True,
        ),
        _timeseries(
            "Mean batch size by model",
            [_target(f"sum by (model) (rate(vitserve_batch_size_sum{{{MODEL}}}[{RATE}])) / "
                     f"sum by (model) (rate(vitserve_batch_size_count{{{MODEL}}}[{RATE}]))", "{{model}}")],
            GridPos(h=8, w=8, x=8, y=y + 1),
            "none",
            "Average requests per batch: above 1 means dynamic batching is merging concurrent requests.",
        ),
        _timeseries(
            "Queue depth and capacity",
            [
                _target(f"sum by (model) (vitserve_queue_depth{{{MODEL}}})", "{{model}} depth", "A"),
                _target(f"max by (model) (vitserve_queue_capacity{{{MODEL}}})", "{{model}} capacity", "B"),
            ],
            GridPos(h=8, w=8, x=16, y=y + 1),
            "none",
            "Images waiting per model; at capacity new requests get 503 + Retry-After.",
        ),
    ]


def _errors_row(y: int) -> list[Any]:
    return [
        RowPanel(title="Errors", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        _timeseries(
            "Error responses/s by status",
            [_target(f'sum by (model, code) (rate(vitserve_requests_total{{{MODEL}, code!~"2.."}}[{RATE}]))',
                     "{{model}} {{code}}")],
            GridPos(h=8, w=8, x=0, y=y + 1),
            "reqps",
            "4xx: bad input, unknown model, too large, unsupported media; 503: overloaded/not ready; 504: deadline.",
        ),
        _timeseries(
            "Error ratio by model",
            [_target(f'sum by (model) (rate(vitserve_requests_total{{{MODEL}, code!~"2.."}}[{RATE}])) / '
                     f"sum by (model) (rate(vitserve_requests_total{{{MODEL}}}[{RATE}]))", "{{model}}")],
            GridPos(h=8, w=8, x=8, y=y + 1),
            "percentunit",
            "Share of non-2xx responses; the alert VitserveHighErrorRatio pages on the 5xx share only.",
        ),
        _timeseries(
            "Overload, expired deadlines and failed batches",
            [
                _target(f"sum by (model, reason) (rate(vitserve_rejected_total{{{MODEL}}}[{RATE}]))",
                        "{{model}} rejected {{reason}}", "A"),
                _target(f"sum by (model) (rate(vitserve_deadline_expired_total{{{MODEL}}}[{RATE}]))",
                        "{{model}} deadline expired", "B"),
                _target(f"sum by (model) (rate(vitserve_batch_failures_total{{{MODEL}}}[{RATE}]))",
                        "{{model}} batch failed", "C"),
            ],
            GridPos(h=8, w=8, x=16, y=y + 1),
            "reqps",
            "Requests refused before queueing (503: queue full / not ready), requests past their deadline "
            "(504, never computed) and batches ONNX Runtime failed.",
        ),
    ]


def _models_row(y: int) -> list[Any]:
    return [
        RowPanel(title="Models", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        Table(
            title="Model readiness, version and execution provider",
            description="1 = ready. The provider is the one ONNX Runtime really gave the session.",
            dataSource=DATASOURCE,
            targets=[_target(f"max by (model, version, provider) (vitserve_model_ready{{{MODEL}}})", "",
                             instant=True, fmt="table")],
            gridPos=GridPos(h=8, w=8, x=0, y=y + 1),
        ),
        Table(
            title="Model state",
            description="Current state per model: ready, loading, failed (reason in GET /v1/models), "
            "unloading, unloaded. The alert VitserveModelNotReady fires on failed/loading for 2 minutes.",
            dataSource=DATASOURCE,
            targets=[_target(f"max by (model, state) (vitserve_model_state{{{MODEL}}}) == 1", "",
                             instant=True, fmt="table")],
            gridPos=GridPos(h=8, w=4, x=8, y=y + 1),
        ),
        BarGauge(
            title="GFLOPs per image",
            description="FLOPs of one forward pass, counted on the exported ONNX graph.",
            dataSource=DATASOURCE,
            targets=[_target(f"max by (model) (vitserve_model_flops{{{MODEL}}}) / 1e9", "{{model}}", instant=True)],
            gridPos=GridPos(h=8, w=6, x=12, y=y + 1),
            orientation="horizontal",
            displayMode="basic",
            calc="lastNotNull",
            format="none",
        ),
        BarGauge(
            title="Parameters (millions)",
            description="Parameter count of each model.",
            dataSource=DATASOURCE,
            targets=[_target(f"max by (model) (vitserve_model_parameters{{{MODEL}}}) / 1e6", "{{model}}",
                             instant=True)],
            gridPos=GridPos(h=4, w=6, x=18, y=y + 1),
            orientation="horizontal",
            displayMode="basic",
            calc="lastNotNull",
            format="none",
        ),
        BarGauge(
            title="Load and warm-up time",
            description="Seconds from reading the model to ready (session creation plus warm-up).",
            dataSource=DATASOURCE,
            targets=[_target(f"max by (model) (vitserve_model_load_seconds{{{MODEL}}})", "{{model}}",
                             instant=True)],
            gridPos=GridPos(h=4, w=6, x=18, y=y + 5),
            orientation="horizontal",
            displayMode="basic",
            calc="lastNotNull",
            format="s",
        ),
    ]


def _gpu_row(y: int) -> list[Any]:
    """Triton's GPU series (service/gpu_metrics.py): absent, so these panels are empty, without a GPU."""
    gpu = "gpu_uuid"
    return [
        RowPanel(title="GPU", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        _timeseries(
            "GPU utilisation",
            [_target(f"max by ({gpu}) (nv_gpu_utilization)", "{{gpu_uuid}}")],
            GridPos(h=8, w=8, x=0, y=y + 1),
            "percentunit",
            "Fraction of time a kernel ran on each GPU (NVML, read at scrape). Empty on machines without a GPU.",
        ),
        _timeseries(
            "GPU memory",
            [
                _target(f"max by ({gpu}) (nv_gpu_memory_used_bytes)", "{{gpu_uuid}} used"),
                _target(f"max by ({gpu}) (nv_gpu_memory_total_bytes)", "{{gpu_uuid}} total", "B"),
            ],
            GridPos(h=8, w=8, x=8, y=y + 1),
            "bytes",
            "Device memory used (sessions, TensorRT engines, the CUDA arena) against the total.",
        ),
        _timeseries(
            "GPU power",
            [_target(f"max by ({gpu}) (nv_gpu_power_usage)", "{{gpu_uuid}}")],
            GridPos(h=8, w=8, x=16, y=y + 1),
            "watt",
            "Board power draw in watts.",
        ),
    ]


def _accuracy_row(y: int) -> list[Any]:
    """Accuracy next to cost: what each variant gains beside what it costs (issue 10)."""
    latency = _quantile(0.5, "vitserve_request_duration_seconds", selector=f'{MODEL}, code=~"2.."')
    return [
        RowPanel(title="Accuracy vs cost", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        Table(
            title="Accuracy vs p50 latency vs GFLOPs",
            description="Held-out top-1 accuracy from each model's manifest (measured through the exported graph "
            "and the service's preprocessing), p50 end-to-end latency of successful requests, and GFLOPs per image. "
            "Accuracies are comparable ONLY between rows with the same dataset identity (name@fingerprint).",
            dataSource=DATASOURCE,
            targets=[
                _target(f'max by (model, dataset) (vitserve_model_accuracy{{{MODEL}, metric="top1"}})', "",
                        "A", instant=True, fmt="table"),
                _target(latency, "", "B", instant=True, fmt="table"),
                _target(f"max by (model) (vitserve_model_flops{{{MODEL}}}) / 1e9", "", "C", instant=True,
                        fmt="table"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "top-1 accuracy", "Value #B": "p50 latency (s)",
                                     "Value #C": "GFLOPs / image"},
                }},
            ],
            gridPos=GridPos(h=8, w=24, x=0, y=y + 1),
        ),
    ]


def build_dashboard() -> Dashboard:
    """The whole dashboard; panel ids are assigned in layout order."""
    panels = [
        *_latency_row(0),
        *_throughput_row(17),
        *_batching_row(26),
        *_errors_row(35),
        *_models_row(44),
        *_accuracy_row(53),
        *_gpu_row(62),
    ]
    model_var = Template(
        name="model",
        label="Model",
        query="label_values(vitserve_model_ready, model)",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        refresh=2,
        sort=1,
        default="$__all",
    )
    return Dashboard(
        title="vitserve",
        uid=DASHBOARD_UID,
        description="Vision Transformer variants served by vitserve: latency, throughput, batching, FLOPs, errors.",
        tags=["vitserve", "onnxruntime"],
        timezone="utc",
        refresh="10s",
        time=Time("now-30m", "now"),
        templating=Templating(list=[model_var]),
        panels=panels,
    ).auto_panel_ids()


def render() -> str:
    """The dashboard as Grafana JSON text (stable key order, trailing newline)."""
    data: dict[str, Any] = json.loads(json.dumps(build_dashboard().to_json_data(), cls=DashboardEncoder))
    for variable in data["templating"]["list"]:
        if variable.get("includeAll") and variable["current"].get("value") == "$__all":
            variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return json.dumps(data, cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python docker/grafana/generate.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
