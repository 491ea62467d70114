"""gRPC with `--http-workers 2`: the engine process serves it, beside the batchers the front ends feed.

Inference, health and repository control through gRPC; its answers bit for bit those of REST (through a front end),
so both protocols reach the one session; a load through gRPC is seen by the front ends; SIGTERM drains to exit 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_support import OUTPUT, build_grpc_repository, grpc_input, images, metric, rest_logits
from service_server import API_KEY, ServerProcess, children, start_server
from tritonclient.utils import InferenceServerException

ADMIN = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = build_grpc_repository(tmp_path_factory.mktemp("grpc_workers_repo"))
    srv = start_server(repo, tmp_path_factory.mktemp("grpc_workers"), "--http-workers", "2", "--models", "demo",
                       "--warmup", "one", grpc=True)
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


def _listeners(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (from /proc: its sockets' inodes in the LISTEN state)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_engine_serves_grpc_with_the_front_ends_batchers(workers: ServerProcess) -> None:
    assert workers.grpc_target is not None
    grpc_port = int(workers.grpc_target.rsplit(":", 1)[1])
    procs = children(workers)
    assert grpc_port in _listeners(procs["vitserve-engine"])
    assert not any(grpc_port in _listeners(pid) for name, pid in procs.items() if name.startswith("vitserve-fe"))
    c = grpcclient.InferenceServerClient(workers.grpc_target)
    try:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("demo")
        x = images(5, seed=11)
        logits = c.infer("demo", [grpc_input(x)]).as_numpy(OUTPUT)
        assert logits is not None and logits.tobytes() == rest_logits(workers.base_url, "demo", x).tobytes()
        top = c.infer("demo", [grpc_input(x)], outputs=[grpcclient.InferRequestedOutput(OUTPUT, class_count=2)])
        assert top.as_numpy(OUTPUT).shape == (5, 2)
        stats = c.get_inference_statistics("demo").model_stats[0]
        assert stats.inference_count >= 15  # gRPC's and the front end's requests, counted in one place
        assert metric(workers.base_url, "vitserve_requests_total", model="demo", code="200", protocol="grpc") == 2
        with pytest.raises(InferenceServerException) as err:
            c.infer("nope", [grpc_input(x)])
        assert err.value.status() == "StatusCode.NOT_FOUND"
    finally:
        c.close()


def test_health_and_repository_control_through_the_engine(workers: ServerProcess) -> None:
    assert workers.grpc_target is not None
    with grpc.insecure_channel(workers.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    c = grpcclient.InferenceServerClient(workers.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as err:
            c.load_model("demo-cb")
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        c.load_model("demo-cb", headers=ADMIN)
        assert c.is_model_ready("demo-cb")
        x = images(1, seed=12)
        # the front ends mirror the engine's models: REST through them serves the model gRPC loaded
        assert np.array_equal(rest_logits(workers.base_url, "demo-cb", x),
                              c.infer("demo-cb", [grpc_input(x)]).as_numpy(OUTPUT))
        c.unload_model("demo-cb", headers=ADMIN)
        assert not c.is_model_ready("demo-cb")
    finally:
        c.close()


def test_a_stream_is_served_through_the_engine_as_rest_is_through_a_front_end(workers: ServerProcess) -> None:
    """ModelStreamInfer in the workers mode: answers by id equal REST's through a front end; a bad request fails
    in-band and the stream goes on."""
    assert workers.grpc_target is not None
    x = images(2, seed=21)
    expected = rest_logits(workers.base_url, "demo", x).tobytes()
    answers: list[tuple[object, object]] = []
    client = grpcclient.InferenceServerClient(workers.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as unary:
            client.infer("nope", [grpc_input(x)])
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        client.async_stream_infer("demo", [grpc_input(x)], request_id="a")
        client.async_stream_infer("nope", [grpc_input(x)], request_id="bad")
        client.async_stream_infer("demo", [grpc_input(x)], request_id="b")
        client.stop_stream()
    finally:
        client.close()
    served = {r.get_response().id: r.as_numpy(OUTPUT).tobytes() for r, e in answers if e is None}
    assert served == {"a": expected, "b": expected}
    assert [e.message() for _, e in answers if e is not None] == [unary.value.message()]
