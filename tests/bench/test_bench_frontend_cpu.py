"""Front-end CPU per inference (issue 13): server CPU minus the raw CPU at the batch size the server executed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.ceiling import frontend_cpu, raw_cpu_us_at
from bench.inproc import Timing
from bench.report import frontend_table
from bench.results import Sample, summarise
from bench.timings import mean_batch_size, parse_v2_stats


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
    from service.runtimes.onnxruntime.options import OnnxRuntimeOptions

    monkeypatch.delenv("VITSERVE_ALLOW_SPINNING", raising=False)
    assert server_spinning(None) is OnnxRuntimeOptions.model_fields["allow_spinning"].default
    assert server_spinning({"VITSERVE_ALLOW_SPINNING": "true"}) is True
    monkeypatch.setenv("VITSERVE_ALLOW_SPINNING", "1")
    assert server_spinning({}) is True and server_spinning({"VITSERVE_ALLOW_SPINNING": "false"}) is False


@pytest.mark.parametrize(("batch", "expected"), [(8.0, [8]), (6.0, [4, 8]), (7.98, [4, 8]), (0.5, [1]), (100, [64]),
                                                 (1, [1]), (33, [32, 64])])
def test_the_raw_session_is_timed_at_the_batch_sizes_around_the_servers(batch: float, expected: list[int]) -> None:
    from bench.ceiling import bracket

    assert bracket([1, 2, 4, 8, 16, 32, 64], batch) == expected


def test_raw_timings_before_and_after_a_point_are_averaged_per_batch_size() -> None:
    from bench.ceiling import mean_timing

    both = mean_timing(_timing(8, 800.0), _timing(8, 1000.0))
    assert both.batch_size == 8 and both.repeats == 20
    assert raw_cpu_us_at([both], 8) == pytest.approx(900.0)
    with pytest.raises(ValueError, match="different batch sizes"):
        mean_timing(_timing(4, 800.0), _timing(8, 800.0))
    untimed = Timing(batch_size=8, repeats=1, median_s=1, p90_s=1, mean_s=1, min_s=1)
    assert mean_timing(untimed, _timing(8, 800.0)).cpu_s is None  # no CPU figure is made up from one side


def _reading(fe: float | None, loop: float) -> dict[str, float | None]:
    return {"server_cpu_us_per_inference": 1000.0, "server_mean_batch_size": 8.0, "raw_cpu_us_per_image": 800.0,
            "frontend_cpu_us_per_inference": fe, "event_loop_cpu_us_per_inference": loop}


def test_the_median_round_is_reported_with_every_rounds_figures_in_measured_order() -> None:
    from bench.ceiling import median_round

    chosen = median_round([_reading(300.0, 250.0), _reading(200.0, 190.0), _reading(260.0, 240.0)])
    assert chosen["frontend_cpu_us_per_inference"] == 260.0 and chosen["event_loop_cpu_us_per_inference"] == 240.0
    assert chosen["rounds"] == [300.0, 200.0, 260.0] and chosen["event_loop_rounds"] == [250.0, 190.0, 240.0]
    # an even count: the lower middle (never an average that no round measured); a round without a reading is
    # listed but not ranked
    even = median_round([_reading(300.0, 1.0), _reading(None, 2.0), _reading(200.0, 3.0), _reading(260.0, 4.0),
                         _reading(240.0, 5.0)])
    assert even["frontend_cpu_us_per_inference"] == 240.0 and even["rounds"] == [300.0, None, 200.0, 260.0, 240.0]
    with pytest.raises(ValueError):
        median_round([_reading(None, 1.0)])
    table = frontend_table({"v2 c=16": chosen})
    assert table.splitlines()[0].endswith("| front-end, each round | event loop, each round |")
    assert "| 260 | 240 | 300 / 200 / 260 | 250 / 190 / 240 |" in table


def test_paired_rounds_time_the_raw_session_around_each_point_of_a_real_server(
    demo_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real server and a real ONNX Runtime session: every round of every path reads the server's CPU and
    batch size and subtracts a raw figure timed at the batch sizes asked for, around that very point."""
    from bench import ceiling
    from bench.inproc import ort_session
    from bench.loadgen import MeasureConfig
    from bench.models import model_file
    from bench.payloads import classify_request, encode_image, infer_request, synthetic_image
    from bench.procs import vitserve_server

    session = ort_session(model_file(demo_repository, "demo"), spinning=False)
    timed: list[list[int]] = []
    real_time_ort = ceiling.time_ort

    def recording_time_ort(sess: object, sizes: list[int], **kw: object) -> list[Timing]:
        timed.append(list(sizes))
        return real_time_ort(sess, sizes, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ceiling, "time_ort", recording_time_ort)
    cfg = MeasureConfig(window_s=0.4, warmup_s=0.2, max_windows=2, stability_windows=2, fixed_duration_s=0.8)
    specs = {"v2 c=16": (infer_request("demo", (1, 3, 32, 32)), "v2-binary"),
             "jpeg c=16": (classify_request("demo", encode_image(synthetic_image(32, 32), "jpeg"), "jpeg"), "v1-jpeg")}
    with vitserve_server(demo_repository, ["demo"], log_path=demo_repository.parent / "paired-server.log",
                         ready_timeout_s=120) as srv:
        out = ceiling.paired_frontend_cpu(srv.url, session, specs, {"v2 c=16": [4, 8], "jpeg c=16": [8]}, rounds=2,
                                          cfg=cfg, stats_path="/v2/models/demo/stats", server_pgid=srv.pid,
                                          client="python", raw_time_s=0.1)
    # round 1: v2 then JPEG; round 2: JPEG then v2; each point with the raw session timed before and after it
    assert timed == [[4, 8], [4, 8], [8], [8], [8], [8], [4, 8], [4, 8]]
    for path in specs:
        reading = out[path]
        assert len(reading["rounds"]) == 2 and all(v is not None for v in reading["rounds"])
        assert reading["frontend_cpu_us_per_inference"] in reading["rounds"]
        # 16 requests in flight: no batch holds more than 16 (the model takes up to 64)
        assert reading["server_cpu_us_per_inference"] > 0 and 1 <= reading["server_mean_batch_size"] <= 16
        assert reading["frontend_cpu_us_per_inference"] == pytest.approx(
            reading["server_cpu_us_per_inference"] - reading["raw_cpu_us_per_image"])
