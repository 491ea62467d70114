"""Smoke: a tiny sweep against a real vitserve (uvicorn on loopback) serving a demo model.

Checks the report's structure and that no request failed — never timings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.loadgen import MeasureConfig, sweep
from bench.payloads import classify_request, encode_image, infer_request, synthetic_image
from bench.procs import vitserve_server
from bench.report import perf_analyzer_table
from bench.results import PERF_ANALYZER_COLUMNS

CFG = MeasureConfig(window_s=0.5, warmup_s=0.3, max_windows=2, stability_windows=2, fixed_duration_s=1.0)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory):
    from export.build import build_model

    repo = tmp_path_factory.mktemp("bench_repo")
    build_model("demo", Path(repo), progress=False, max_batch_size=8)
    with vitserve_server(Path(repo), ["demo"], log_path=Path(repo) / "server.log", ready_timeout_s=120) as srv:
        yield srv


@pytest.mark.parametrize("protocol", ["v2", "v1"])
def test_tiny_sweep_against_a_demo_server_has_a_complete_report_and_no_errors(demo_server, protocol: str) -> None:
    if protocol == "v2":
        spec = infer_request("demo", (1, 3, 32, 32))
    else:
        spec = classify_request("demo", encode_image(synthetic_image(32, 32), "png"), "png")
    points = sweep(demo_server.url, spec, concurrencies=[1, 2], cfg=CFG, protocol=protocol,
                   stats_path="/v2/models/demo/stats", server_pgid=demo_server.pid, progress=None)
    assert [p.concurrency for p in points] == [1, 2]
    for p in points:
        assert p.errors_by_status == {}
        assert p.requests > 0
        assert list(p.perf_analyzer_row()) == PERF_ANALYZER_COLUMNS
        assert set(p.latency_us) >= {"p50", "p90", "p95", "p99", "avg"}
        # the server's queue/compute split: per response on /v1, from /v2/models/demo/stats on /v2
        assert {"queue", "compute"} <= set(p.server_us)
        assert p.server_timing_source == ("response" if protocol == "v1" else "v2-stats")
        assert p.server_cpu_cores is not None and p.server_cpu_cores > 0  # the server's process group was read
    table = perf_analyzer_table(points)
    assert table.splitlines()[0].startswith("| Concurrency | Inferences/Second |")
    assert len(table.splitlines()) == 2 + len(points)
