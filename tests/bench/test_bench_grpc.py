"""The load generator's gRPC client against a real grpc.aio server (a trivial ModelInfer in this test), and the
gRPC comparison's wiring."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from bench.cli import build_parser
from bench.grpc_client import MODEL_INFER, infer_message
from bench.loadgen import MeasureConfig, sweep
from bench.payloads import infer_request
from bench.procs import echo_server, free_port

grpc = pytest.importorskip("grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

FAST = MeasureConfig(window_s=0.5, warmup_s=0.2, max_windows=3, stability_windows=2, fixed_duration_s=1.0)


def test_the_grpc_message_carries_the_same_tensor_as_the_rest_body() -> None:
    spec = infer_message("m", (2, 3, 4, 4), "pixel_values", "logits", seed=3)
    assert spec.path == MODEL_INFER and spec.images_per_request == 2
    request = service_pb2.ModelInferRequest.FromString(spec.body)
    assert request.model_name == "m" and [o.name for o in request.outputs] == ["logits"]
    (tensor_input,) = request.inputs
    assert (tensor_input.name, tensor_input.datatype) == ("pixel_values", "FP32")
    assert list(tensor_input.shape) == [2, 3, 4, 4]
    grpc_tensor = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(2, 3, 4, 4)
    rest = infer_request("m", (2, 3, 4, 4), seed=3)
    header_length = int(rest.headers["Inference-Header-Content-Length"])
    rest_tensor = np.frombuffer(rest.body[header_length:], dtype="<f4").reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(grpc_tensor, rest_tensor)


@pytest.fixture(scope="module")
def grpc_target() -> Iterator[str]:
    """A grpc.aio server whose ModelInfer answers OK, or RESOURCE_EXHAUSTED for the model named 'full'."""
    port = free_port()
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def model_infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = service_pb2.ModelInferRequest.FromString(body)
        if request.model_name == "full":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return service_pb2.ModelInferResponse(model_name=request.model_name).SerializeToString()

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop.append(asyncio.Event())
        started.set()
        await stop[0].wait()
        await server.stop(None)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"127.0.0.1:{port}"
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(30)


def test_a_grpc_sweep_counts_answers_and_maps_failures_to_rest_statuses(grpc_target: str) -> None:
    with echo_server() as http:  # the HTTP side only reads statistics (none here)
        ok = sweep(http.url, infer_message("m", (1, 3, 4, 4)), concurrencies=[1, 4], cfg=FAST, progress=None,
                   client="grpc", grpc_target=grpc_target)
        full = sweep(http.url, infer_message("full", (1, 3, 4, 4)), concurrencies=[2], cfg=FAST, progress=None,
                     client="grpc", grpc_target=grpc_target)
    assert [p.concurrency for p in ok] == [1, 4]
    assert all(p.requests > 0 and p.errors == 0 for p in ok)
    assert full[0].requests == 0 and set(full[0].errors_by_status) == {"429"}


def test_grpc_client_and_target_go_together() -> None:
    with pytest.raises(ValueError, match="grpc"):
        sweep("http://127.0.0.1:1", infer_message("m", (1, 3, 4, 4)), concurrencies=[1], client="grpc")


def test_the_grpc_comparison_has_a_subcommand() -> None:
    args = build_parser().parse_args(["grpc", "--preset", "demo", "--quick"])
    assert callable(args.func) and args.preset == ["demo"]
