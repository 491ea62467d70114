"""Front-end CPU per inference (issue 13): server CPU minus the raw CPU at the batch size the server executed."""

from __future__ import annotations

import math

import pytest

from bench.ceiling import frontend_cpu, raw_cpu_us_at
from bench.inproc import Timing
from bench.results import Sample, summarise
from bench.timings import mean_batch_size, parse_v2_stats
from bench.report import frontend_table


def _timing(batch: int, cpu_us_per_image: float) -> Timing:
    return Timing(batch_size=batch, repeats=10, median_s=0.001, p90_s=0.001, mean_s=0.001, min_s=0.001,
                  cpu_s=cpu_us_per_image * batch / 1e6)


RAW = [_timing(1, 1200.0), _timing(4, 900.0), _timing(8, 800.0)]


@pytest.mark.parametrize(("batch", "expected"), [(1, 1200.0), (2, 1100.0), (6, 850.0), (8, 800.0), (0.5, 1200.0),
                                                 (64, 800.0)])
def test_raw_cpu_is_interpolated_between_timed_batch_sizes_and_clamped(batch: float, expected: float) -> None:
    assert raw_cpu_us_at(RAW, batch) == pytest.approx(expected)


def test_raw_cpu_without_cpu_timings_is_unknown() -> None:
    assert math.isnan(raw_cpu_us_at([Timing(batch_size=1, repeats=1, median_s=1, p90_s=1, mean_s=1, min_s=1)], 1))


def test_mean_batch_size_comes_from_the_v2_statistics_counters() -> None:
    def doc(images: int, batches: int) -> dict[str, object]:
        return {"model_stats": [{"name": "m", "version": "1", "inference_count": images, "execution_count": batches,
                                 "inference_stats": {}}]}

    before, after = parse_v2_stats(doc(100, 40)), parse_v2_stats(doc(700, 140))
    assert mean_batch_size(before, after) == pytest.approx(6.0)
    assert mean_batch_size(after, after) is None  # no batch ran in between


def test_frontend_cpu_subtracts_the_raw_cpu_at_the_servers_batch_size() -> None:
    samples = [Sample(start=0.0, end=0.01, status=200) for _ in range(1000)]
    point = summarise(samples, wall_s=1.0, cpu_s=0.1, mode="concurrency", windows=1, stable=True, concurrency=16,
                      server_cpu_s=1.25, server_mean_batch_size=6.0, server_loop_cpu_s=0.3)
    fe = frontend_cpu(point, RAW)
    assert fe["server_cpu_us_per_inference"] == pytest.approx(1250.0)
    assert fe["raw_cpu_us_per_image"] == pytest.approx(850.0)
    assert fe["frontend_cpu_us_per_inference"] == pytest.approx(400.0)
    assert fe["event_loop_cpu_us_per_inference"] == pytest.approx(300.0)  # the main thread, read directly
    assert "| v2 c=16 | 1250 | 6.00 | 850 | 400 | 300 |" in frontend_table({"v2 c=16": fe})


def test_the_main_thread_cpu_of_a_real_process_is_read_apart_from_its_other_threads() -> None:
    """A process whose second thread burns CPU while its main thread sleeps: the main thread's reading stays low."""
    import os
    import subprocess
    import sys
    import time

    from bench.procs import group_cpu_seconds, main_thread_cpu_seconds

    code = ("import threading, time\n"
            "def burn():\n    t = time.time()\n    while time.time() - t < 0.6: pass\n"
            "threading.Thread(target=burn).start(); time.sleep(1.5)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        time.sleep(1.0)
        main, whole = main_thread_cpu_seconds(proc.pid), group_cpu_seconds(proc.pid)
    finally:
        proc.wait(timeout=10)
    assert main is not None and whole >= 0.3 and main < whole / 2
    assert main_thread_cpu_seconds(proc.pid) is None  # gone
    assert os.getpid() and main_thread_cpu_seconds(os.getpid()) is not None


def test_frontend_cpu_is_unknown_without_server_cpu_or_batch_size() -> None:
    point = summarise([Sample(start=0.0, end=0.01, status=200)], wall_s=1.0, cpu_s=0.1, mode="concurrency",
                      windows=1, stable=True, concurrency=16)
    assert frontend_cpu(point, RAW)["frontend_cpu_us_per_inference"] is None


def test_the_raw_session_spins_as_the_servers_sessions_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.ceiling import server_spinning
    from service.settings import Settings

    monkeypatch.delenv("VITSERVE_ALLOW_SPINNING", raising=False)
    assert server_spinning(None) is Settings.model_fields["allow_spinning"].default
    assert server_spinning({"VITSERVE_ALLOW_SPINNING": "true"}) is True
    monkeypatch.setenv("VITSERVE_ALLOW_SPINNING", "1")
    assert server_spinning({}) is True and server_spinning({"VITSERVE_ALLOW_SPINNING": "false"}) is False
