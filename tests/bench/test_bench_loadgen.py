"""The load generator against a trivial local server, and its reduction of samples to a report."""

from __future__ import annotations

import math

import pytest

from bench.loadgen import MeasureConfig, closed_loop, open_loop, run, sweep
from bench.payloads import infer_request
from bench.procs import echo_server
from bench.results import PERF_ANALYZER_COLUMNS, Sample, summarise

FAST = MeasureConfig(window_s=0.5, warmup_s=0.2, max_windows=3, stability_windows=2, fixed_duration_s=1.0)


@pytest.fixture(scope="module")
def echo_url():
    with echo_server() as srv:
        yield srv.url


def test_perf_analyzer_columns_are_named_as_perf_analyzer_names_them() -> None:
    assert PERF_ANALYZER_COLUMNS[:13] == [
        "Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
        "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
        "p50 latency", "p90 latency", "p95 latency", "p99 latency",
    ]


def test_closed_loop_sweep_reports_every_level_without_errors(echo_url: str) -> None:
    spec = infer_request("m", (2, 3, 4, 4))
    points = sweep(echo_url, spec, concurrencies=[1, 2], cfg=FAST, progress=None)
    assert [p.concurrency for p in points] == [1, 2]
    for p in points:
        assert p.requests > 0 and p.errors == 0
        assert p.inferences_per_second == pytest.approx(2 * p.requests_per_second)
        lat = p.latency_us
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert "compute" in p.server_us  # read from the echo server's Server-Timing header
        assert 0 < p.client_cpu_cores
        assert list(p.perf_analyzer_row()) == PERF_ANALYZER_COLUMNS


def test_open_loop_point_is_reported_as_a_request_rate(echo_url: str) -> None:
    spec = infer_request("m", (1, 3, 4, 4))
    cfg = MeasureConfig(window_s=0.5, warmup_s=0.2, max_windows=2, stability_windows=2, fixed_duration_s=1.0)
    p = run(open_loop(echo_url, spec, 100.0, cfg))
    assert p.mode == "rate" and p.request_rate == 100.0 and p.concurrency is None
    assert p.requests > 0 and p.errors == 0
    assert list(p.perf_analyzer_row())[0] == "Request Rate"


def test_unreachable_server_is_counted_as_connection_errors() -> None:
    from bench.procs import free_port

    spec = infer_request("m", (1, 3, 4, 4))
    cfg = MeasureConfig(window_s=0.3, warmup_s=0.0, max_windows=1, stability_windows=1, fixed_duration_s=0.3)
    p = run(closed_loop(f"http://127.0.0.1:{free_port()}", spec, 1, cfg))
    assert p.requests == 0
    assert p.errors_by_status.get("conn", 0) > 0
    assert math.isnan(p.latency_us["p50"])


def test_summarise_counts_errors_by_status_and_times_only_successes() -> None:
    samples = [Sample(start=0.0, end=0.010 * (i + 1), status=200, server={"queue": 0.001, "compute": 0.002})
               for i in range(10)]
    samples += [Sample(start=0.0, end=0.5, status=503), Sample(start=0.0, end=0.5, status=503),
                Sample(start=0.0, end=0.5, status=0), Sample(start=0.0, end=0.0, status=-1)]
    p = summarise(samples, wall_s=2.0, cpu_s=0.1, mode="concurrency", windows=1, stable=True, concurrency=4)
    assert p.errors_by_status == {"503": 2, "conn": 1, "client_backlog": 1}
    assert p.requests == 10 and p.requests_per_second == 5.0
    assert p.latency_us["max"] == pytest.approx(100_000)
    assert p.latency_us["p50"] == pytest.approx(55_000)
    assert p.server_us == pytest.approx({"queue": 1000.0, "compute": 2000.0})
    assert p.client_cpu_cores == pytest.approx(0.05)


def test_measure_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        MeasureConfig(window_s=0)
    with pytest.raises(ValueError):
        MeasureConfig(max_windows=2, stability_windows=3)
    with pytest.raises(ValueError):
        sweep("http://127.0.0.1:1", infer_request("m", (1, 1)), progress=None)
