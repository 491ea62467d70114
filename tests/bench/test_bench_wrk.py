"""The wrk load generator (bench/wrk.py) through a real vitserve server: counts, CPU, and non-2xx as failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cli import main as bench_main
from bench.frontend import MODEL, SIZE, build_repository, check_answers, cpu_by_role
from bench.loadgen import MeasureConfig, ServerReading
from bench.payloads import classify_request, encode_image, infer_request, synthetic_image
from bench.procs import ServerProcess, group_cpu_by_name, vitserve_server
from bench.wrk import WRK_STATUS_ERRORS, WrkError, _failures, closed_loop_wrk, lua_script, run_wrk, wrk_path

pytestmark = pytest.mark.skipif(wrk_path() is None,
                                reason="wrk is not installed (CI installs it: docker/ci_checks.sh install)")

CFG = MeasureConfig(window_s=1.0, warmup_s=0.0, fixed_duration_s=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = build_repository(tmp_path_factory.mktemp("wrk"))
    env = {"VITSERVE_HTTP_WORKERS": "1", "VITSERVE_STANDIN_BATCH_MS": "1", "VITSERVE_WARMUP": "one"}
    with vitserve_server(root, [MODEL], env=env, ready_timeout_s=120) as srv:
        yield srv


def test_wrk_measures_a_real_server_and_its_own_cpu(server: ServerProcess) -> None:
    spec = infer_request(MODEL, (1, 3, SIZE, SIZE))
    jpeg = classify_request(MODEL, encode_image(synthetic_image(SIZE, SIZE), "jpeg"), "jpeg")
    check_answers(server.url, spec, jpeg)
    assert server.pid is not None
    before = group_cpu_by_name(server.pid)
    reading = ServerReading(protocol="v2-binary", stats_path=f"/v2/models/{MODEL}/stats", server_pgid=server.pid)
    point = closed_loop_wrk(server.url, spec, 4, CFG, reading=reading)
    assert point.client == "wrk" and point.concurrency == 4 and point.errors_by_status == {}
    assert point.requests > 10 and 0.5 < point.measured_s < 3
    assert point.inferences_per_second == pytest.approx(point.requests / point.measured_s)
    assert 0 < point.latency_us["p50"] <= point.latency_us["p99"] <= point.latency_us["max"]
    assert point.client_cpu_us_per_request > 0 and point.client_cpu_cores > 0
    assert point.server_cpu_us_per_inference is not None and point.server_cpu_us_per_inference > 0
    # the server's statistics moved by the requests wrk sent: its queue/compute split is read from them
    assert point.server_timing_source == "v2-stats" and point.server_us["compute"] > 0
    # ... and the batch size it executed (the ceiling's front-end CPU subtracts raw CPU at that batch size)
    assert point.server_mean_batch_size is not None and 1 <= point.server_mean_batch_size <= 4
    # and its event-loop (main) thread's share, read apart from the compute threads
    loop = point.server_loop_cpu_us_per_inference
    assert loop is not None and 0 < loop < point.server_cpu_us_per_inference
    assert set(cpu_by_role(before, group_cpu_by_name(server.pid))) == {"server"}  # one process does both jobs


def test_every_non_2xx_answer_fails_the_point(server: ServerProcess) -> None:
    unknown = infer_request("no_such_model", (1, 3, SIZE, SIZE))
    with pytest.raises(WrkError, match=r"failed requests \{'404': \d+\}"):
        closed_loop_wrk(server.url, unknown, 2, CFG)
    wrong_shape = infer_request(MODEL, (1, 3, SIZE, SIZE // 2))
    with pytest.raises(WrkError, match=r"'400'"):
        closed_loop_wrk(server.url, wrong_shape, 2, CFG)


def test_the_measured_runs_lean_script_still_fails_on_every_error_status(server: ServerProcess, tmp_path: Path) -> None:
    """Without the `response()` hook (the measured run after a warm-up), wrk's own count of failed statuses
    reaches the report, so an error that starts after the warm-up still fails the point."""
    body = tmp_path / "body.bin"
    kw = {"connections": 2, "threads": 1, "duration_s": 1, "timeout_s": 5}
    for spec, failed in ((infer_request(MODEL, (1, 3, SIZE, SIZE)), False),
                         (infer_request("no_such_model", (1, 3, SIZE, SIZE)), True)):
        body.write_bytes(spec.body)
        script = tmp_path / "lean.lua"
        script.write_text(lua_script(spec, body, every_status=False))
        assert "function response" not in script.read_text()
        report, cpu = run_wrk(server.url, script, **kw)  # type: ignore[arg-type]
        assert int(report["requests"]) > 0 and cpu > 0  # type: ignore[call-overload]
        if failed:
            assert _failures(report) == {WRK_STATUS_ERRORS: report["requests"]}
        else:
            assert _failures(report) == {}
    # through closed_loop_wrk: the warm-up's full check names the status
    with pytest.raises(WrkError, match=r"warm-up: failed requests \{'404': \d+\}"):
        closed_loop_wrk(server.url, infer_request("no_such_model", (1, 3, SIZE, SIZE)), 2,
                        MeasureConfig(window_s=1.0, warmup_s=1.0, fixed_duration_s=1.0))


def test_load_command_with_wrk(server: ServerProcess, tmp_path: Path) -> None:
    code = bench_main(["load", "--url", server.url, "--model", MODEL, "--protocol", "v1", "--image-size", str(SIZE),
                       "--concurrency", "2", "--duration", "1", "--quick", "--client", "wrk", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "load" / "load.json").read_text())
    (point,) = data["points"]
    assert data["client"] == point["client"] == "wrk" and point["requests"] > 0 and point["errors_by_status"] == {}
    assert point["client_send_us"] is None  # wrk does not split a request's time: unknown, not zero
    with pytest.raises(SystemExit, match="concurrency only"):
        bench_main(["load", "--url", server.url, "--model", MODEL, "--rate", "10", "--client", "wrk"])
