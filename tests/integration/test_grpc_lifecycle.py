"""The gRPC endpoint's life: without the extra, on a port in use, and through a SIGTERM drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_support import SLOW, SLOW_BATCH_MS, build_grpc_repository, grpc_input, images, wait_for_metric
from service_server import start_server
from tritonclient.utils import InferenceServerException

from bench.procs import free_port


def test_a_server_without_grpcio_serves_rest_and_logs_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "no_grpc"
    (blocked / "grpc").mkdir(parents=True)
    (blocked / "grpc" / "__init__.py").write_text("raise ImportError(\"No module named 'grpc'\", name='grpc')\n")
    repo = build_grpc_repository(tmp_path / "repo")
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH", "")) if p)
    srv = start_server(repo, tmp_path, "--models", "demo", "--warmup", "one", grpc=True, env={"PYTHONPATH": path})
    try:
        assert httpx.get(srv.base_url + "/v2/models/demo/ready").status_code == 200
        lines = [line for line in srv.log().splitlines() if "grpc" in line.lower()]
        assert len(lines) == 1, lines
        assert "gRPC is off" in lines[0] and "pip install 'vitserve[grpc]'" in lines[0]
    finally:
        assert srv.stop() == 0


def test_a_grpc_port_in_use_fails_the_start(tmp_path: Path) -> None:
    repo = build_grpc_repository(tmp_path / "repo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--repository", str(repo), "--models", "demo",
             "--port", str(free_port()), "--grpc-port", str(port), "--warmup", "one"],
            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"cannot bind the gRPC port 127.0.0.1:{port}" in result.stdout + result.stderr


def test_sigterm_answers_accepted_calls_refuses_new_ones_and_exits_0(tmp_path: Path) -> None:
    repo = build_grpc_repository(tmp_path / "repo")
    srv = start_server(repo, tmp_path, "--models", "demo", SLOW, "--warmup", "one", "--shutdown-delay-s", "2",
                       env={"VITSERVE_STANDIN_BATCH_MS": SLOW_BATCH_MS}, grpc=True)
    assert srv.grpc_target is not None
    target = srv.grpc_target
    outcomes: list[object] = []

    def call() -> None:
        c = grpcclient.InferenceServerClient(target)
        try:
            outcomes.append(c.infer(SLOW, [grpc_input(images(1))]).as_numpy("logits"))
        except InferenceServerException as exc:
            outcomes.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_for_metric(srv.base_url, "vitserve_queue_depth", 2, model=SLOW) >= 2
    srv.proc.send_signal(signal.SIGTERM)
    with grpc.insecure_channel(target) as channel:  # the port stays open for the shutdown delay
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        while status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    c = grpcclient.InferenceServerClient(target)
    with pytest.raises(InferenceServerException) as err:
        c.infer("demo", [grpc_input(images(1))])
    assert err.value.status() == "StatusCode.UNAVAILABLE" and "shutting down" in err.value.message()
    c.close()
    for t in threads:
        t.join(30)
    assert srv.proc.wait(60) == 0, srv.log()[-3000:]
    assert len(outcomes) == 3 and all(not isinstance(o, Exception) for o in outcomes), outcomes
