"""The load generator's gRPC client against a real grpc.aio server (a trivial ModelInfer in this test), and the
gRPC comparison's wiring."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from bench.cli import build_parser
from bench.grpc_client import MODEL_INFER, GrpcStreamSender, infer_message, open_channel
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

    async def model_stream_infer(requests: object, context: grpc.aio.ServicerContext) -> None:
        """Answers each message after a delay that shrinks with its id (so out of order), by id; 'full' in-band."""
        writing = asyncio.Lock()

        async def answer(body: bytes) -> None:
            request = service_pb2.ModelInferRequest.FromString(body)
            await asyncio.sleep(0.004 / (1 + int(request.id) % 4))
            reply = service_pb2.ModelStreamInferResponse(infer_response=service_pb2.ModelInferResponse(
                model_name=request.model_name, id=request.id))
            if request.model_name == "full":
                reply.error_message = "queue full"
            async with writing:
                await context.write(reply.SerializeToString())

        tasks = []
        while (body := await context.read()) is not grpc.aio.EOF:
            tasks.append(asyncio.create_task(answer(body)))
        await asyncio.gather(*tasks)

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(model_stream_infer)})
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


@pytest.mark.parametrize(("client", "concurrencies", "refused"), [
    ("grpc", [1, 4], "429"),  # RESOURCE_EXHAUSTED read back as REST's status
    ("grpc-stream", [1, 8], "500"),  # an in-band error_message (answers out of order, matched by id)
])
def test_a_grpc_sweep_counts_answers_and_maps_failures_to_rest_statuses(grpc_target: str, client: str,
                                                                      concurrencies: list[int], refused: str) -> None:
    with echo_server() as http:  # the HTTP side only reads statistics (none here)
        ok = sweep(http.url, infer_message("m", (1, 3, 4, 4)), concurrencies=concurrencies, cfg=FAST, progress=None,
                   client=client, grpc_target=grpc_target)
        full = sweep(http.url, infer_message("full", (1, 3, 4, 4)), concurrencies=[2], cfg=FAST, progress=None,
                     client=client, grpc_target=grpc_target)
    assert [p.concurrency for p in ok] == concurrencies
    assert all(p.requests > 0 and p.errors == 0 for p in ok)
    assert full[0].requests == 0 and set(full[0].errors_by_status) == {refused}


def test_stream_answers_out_of_order_reach_their_own_senders(grpc_target: str) -> None:
    """Eight sends at once, answered out of order: each returns when its own message is answered (a mismatched
    id would leave a sender waiting: the guard below fails then)."""

    async def main() -> list[int]:
        channel = open_channel(grpc_target)
        sender = GrpcStreamSender(channel, infer_message("m", (1, 3, 4, 4)), 30.0)
        try:
            samples = await asyncio.wait_for(asyncio.gather(*(sender.send() for _ in range(8))), 30)
            return [s.status for s in samples]
        finally:
            await sender.close()
            await channel.close()

    assert asyncio.run(main()) == [200] * 8


def test_grpc_client_and_target_go_together() -> None:
    for client in ("grpc", "grpc-stream"):
        with pytest.raises(ValueError, match="gRPC"):
            sweep("http://127.0.0.1:1", infer_message("m", (1, 3, 4, 4)), concurrencies=[1], client=client)


def test_the_grpc_comparison_has_a_subcommand() -> None:
    args = build_parser().parse_args(["grpc", "--preset", "demo", "--quick"])
    assert callable(args.func) and args.preset == ["demo"]
