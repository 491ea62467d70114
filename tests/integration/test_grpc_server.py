"""The gRPC endpoint through Triton's own clients (`tritonclient.grpc`, sync and asyncio) against a real server.

One `vitserve serve` (single process) with REST and gRPC on free ports, on the committed demo models and slow
stand-ins (tests/integration/grpc_support.py): health, metadata, config, statistics, repository control behind the
admin key, raw and typed inference bit for bit equal to REST's, classification, the protocol in the metrics, and
the client's deadline and cancellation reaching the batcher's queue (never computed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_support import (
    INPUT,
    OUTPUT,
    SLOW,
    SLOW_BATCH_MS,
    TIGHT,
    answered,
    build_grpc_repository,
    grpc_input,
    images,
    metric,
    rest_logits,
    wait_for_metric,
    wait_queued_behind,
)
from service_server import API_KEY, ServerProcess, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ADMIN = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = build_grpc_repository(tmp_path_factory.mktemp("grpc_repo"))
    srv = start_server(repo, tmp_path_factory.mktemp("grpc_server"), "--models", "demo", SLOW, TIGHT,
                       "--warmup", "one", env={"VITSERVE_STANDIN_BATCH_MS": SLOW_BATCH_MS}, grpc=True)
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    assert server.grpc_target is not None
    c = grpcclient.InferenceServerClient(server.grpc_target)
    yield c
    c.close()


def stub(server: ServerProcess) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    assert server.grpc_target is not None
    channel = grpc.insecure_channel(server.grpc_target)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_request(x: np.ndarray, model: str = "demo", datatype: str = "FP32",
                shape: list[int] | None = None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = INPUT, datatype
    tensor.shape.extend(shape if shape is not None else x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


def assert_still_serves(client: grpcclient.InferenceServerClient) -> None:
    out = client.infer("demo", [grpc_input(images(1, seed=9))]).as_numpy(OUTPUT)
    assert out is not None and out.shape == (1, 10) and np.isfinite(out).all()


def test_health_metadata_config_and_index(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("demo") and client.is_model_ready("demo", "1")
    server_meta = client.get_server_metadata()
    assert server_meta.name == "vitserve" and "model_repository" in server_meta.extensions
    meta = client.get_model_metadata("demo")
    assert (meta.name, list(meta.versions), meta.platform) == ("demo", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [(INPUT, "FP32", [-1, 3, 32, 32])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [(OUTPUT, "FP32", [-1, 10])]
    config = client.get_model_config("demo").config
    assert (config.name, config.max_batch_size, config.backend) == ("demo", 64, "onnxruntime")
    assert config.input[0].name == INPUT and list(config.input[0].dims) == [3, 32, 32]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 64]
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["demo"].state == "READY" and index["demo-cb"].state == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("demo", "7")
    assert err.value.status() == "StatusCode.NOT_FOUND" and "has no version 7" in err.value.message()


def test_metadata_and_config_match_rest(client: grpcclient.InferenceServerClient, server: ServerProcess) -> None:
    rest_meta = httpx.get(server.base_url + "/v2/models/demo").json()
    meta = client.get_model_metadata("demo", as_json=True)
    assert meta["inputs"] == [{**t, "shape": [str(d) for d in t["shape"]]} for t in rest_meta["inputs"]]
    rest_config = httpx.get(server.base_url + "/v2/models/demo/config").json()
    config = client.get_model_config("demo", as_json=True)["config"]
    assert config["name"] == rest_config["name"] and config["input"][0]["dims"] == [
        str(d) for d in rest_config["input"][0]["dims"]]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == str(
        rest_config["dynamic_batching"]["max_queue_delay_microseconds"])


def test_raw_infer_gives_rests_logits_bit_for_bit(client: grpcclient.InferenceServerClient,
                                                  server: ServerProcess) -> None:
    x = images(3)
    result = client.infer("demo", [grpc_input(x)])
    logits = result.as_numpy(OUTPUT)
    assert logits is not None and logits.dtype == np.float32 and logits.shape == (3, 10)
    assert logits.tobytes() == rest_logits(server.base_url, "demo", x).tobytes()
    response = result.get_response()
    assert (response.model_name, response.model_version) == ("demo", "1")
    pinned = client.infer("demo", [grpc_input(x)], model_version="1", request_id="req-7")
    assert pinned.get_response().id == "req-7"
    assert pinned.as_numpy(OUTPUT).tobytes() == logits.tobytes()


def test_typed_contents_give_the_raw_answer(client: grpcclient.InferenceServerClient, server: ServerProcess) -> None:
    x = images(2, seed=3)
    request = service_pb2.ModelInferRequest(model_name="demo")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = INPUT, "FP32"
    tensor.shape.extend(x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    channel, service = stub(server)
    with channel:
        response = service.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == [OUTPUT] and list(response.outputs[0].shape) == [2, 10]
    typed = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 10)
    assert typed.tobytes() == client.infer("demo", [grpc_input(x)]).as_numpy(OUTPUT).tobytes()
    assert typed.tobytes() == rest_logits(server.base_url, "demo", x).tobytes()


def test_classification_and_requested_outputs(client: grpcclient.InferenceServerClient, server: ServerProcess) -> None:
    x = images(2, seed=5)
    top = client.infer("demo", [grpc_input(x)], outputs=[grpcclient.InferRequestedOutput(OUTPUT, class_count=3)])
    classes = top.as_numpy(OUTPUT)
    assert classes is not None and classes.shape == (2, 3)
    inp = {"name": INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    rest = httpx.post(server.base_url + "/v2/models/demo/infer", json={
        "inputs": [inp], "outputs": [{"name": OUTPUT, "parameters": {"classification": 3}}]}).json()
    assert [c.decode() for c in classes.ravel()] == rest["outputs"][0]["data"]
    logits = client.infer("demo", [grpc_input(x)]).as_numpy(OUTPUT)
    assert [int(c.split(b":")[1]) for c in classes[0]] == list(np.argsort(-logits[0], kind="stable")[:3])
    # every output when none is named; one named twice is refused with REST's message
    named = client.infer("demo", [grpc_input(x)], outputs=[grpcclient.InferRequestedOutput(OUTPUT)])
    assert named.as_numpy(OUTPUT).tobytes() == logits.tobytes()
    with pytest.raises(InferenceServerException) as err:
        client.infer("demo", [grpc_input(x)], outputs=[grpcclient.InferRequestedOutput(OUTPUT)] * 2)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.value.message() == f"output {OUTPUT!r} is requested more than once"


def test_statistics_count_grpc_requests(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("demo").model_stats[0]
    client.infer("demo", [grpc_input(images(4))])
    after = client.get_inference_statistics("demo").model_stats[0]
    assert after.inference_count == before.inference_count + 4
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    every = client.get_inference_statistics()
    assert {s.name for s in every.model_stats} >= {"demo", SLOW}


def test_repository_control_needs_the_admin_key(client: grpcclient.InferenceServerClient) -> None:
    for headers in (None, {"authorization": "Bearer wrong-key-0000"}):
        with pytest.raises(InferenceServerException) as err:
            client.load_model("demo-cb", headers=headers)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        assert err.value.message() == "repository control needs a valid API key (Authorization: Bearer <key> or " \
                                      "X-API-Key)"
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("demo", headers=None)
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_model_ready("demo")
    client.load_model("demo-cb", headers=ADMIN)
    assert client.is_model_ready("demo-cb")
    x = images(1, seed=2)
    assert client.infer("demo-cb", [grpc_input(x)]).as_numpy(OUTPUT).shape == (1, 10)
    client.unload_model("demo-cb", headers=ADMIN)
    assert not client.is_model_ready("demo-cb")
    with pytest.raises(InferenceServerException) as err:
        client.infer("demo-cb", [grpc_input(x)])
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("no-such-model", headers=ADMIN)
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert_still_serves(client)


def test_asyncio_client(server: ServerProcess) -> None:
    async def main() -> None:
        assert server.grpc_target is not None
        c = aioclient.InferenceServerClient(server.grpc_target)
        try:
            assert await c.is_server_live() and await c.is_server_ready() and await c.is_model_ready("demo")
            assert (await c.get_server_metadata()).name == "vitserve"
            assert (await c.get_model_metadata("demo")).inputs[0].name == INPUT
            assert (await c.get_model_config("demo")).config.max_batch_size == 64
            assert (await c.get_inference_statistics("demo")).model_stats[0].name == "demo"
            assert "demo" in {m.name for m in (await c.get_model_repository_index()).models}
            x = images(2, seed=4)
            inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            results = await asyncio.gather(*(c.infer("demo", [inp]) for _ in range(8)))
            expected = rest_logits(server.base_url, "demo", x).tobytes()
            assert all(r.as_numpy(OUTPUT).tobytes() == expected for r in results)
            top = await c.infer("demo", [inp], outputs=[aioclient.InferRequestedOutput(OUTPUT, class_count=2)])
            assert top.as_numpy(OUTPUT).shape == (2, 2)
            await c.load_model("demo-cb", headers=ADMIN)
            assert await c.is_model_ready("demo-cb")
            await c.unload_model("demo-cb", headers=ADMIN)
            assert not await c.is_model_ready("demo-cb")
        finally:
            await c.close()

    asyncio.run(main())


def test_health_service(server: ServerProcess) -> None:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService", "demo"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == serving
        known_not_loaded = health.Check(health_pb2.HealthCheckRequest(service="demo-cb"), timeout=10).status
        assert known_not_loaded == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nothing-here"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == serving
        watch.cancel()


def rest_error(server: ServerProcess, body: dict[str, object], model: str = "demo") -> str:
    answer = httpx.post(f"{server.base_url}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code >= 400
    return str(answer.json()["error"])


def test_hostile_inputs_get_rests_answer_and_the_server_keeps_serving(
    client: grpcclient.InferenceServerClient, server: ServerProcess,
) -> None:
    x = images(1)
    channel, service = stub(server)
    json_input = {"name": INPUT, "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}
    cases: list[tuple[str, service_pb2.ModelInferRequest, grpc.StatusCode, str | None]] = [
        ("unknown model", raw_request(x, model="nope"), grpc.StatusCode.NOT_FOUND,
         rest_error(server, {"inputs": [json_input]}, model="nope")),
        ("bad dtype", raw_request(x.astype(np.float16), datatype="FP16"), grpc.StatusCode.INVALID_ARGUMENT,
         rest_error(server, {"inputs": [{**json_input, "datatype": "FP16"}]})),
        ("wrong shape", raw_request(x, shape=[1, 3, 16, 64]), grpc.StatusCode.INVALID_ARGUMENT,
         rest_error(server, {"inputs": [{**json_input, "shape": [1, 3, 16, 64]}]})),
        ("batch over the limit", raw_request(x, shape=[65, 3, 32, 32]), grpc.StatusCode.INVALID_ARGUMENT,
         rest_error(server, {"inputs": [{**json_input, "shape": [65, 3, 32, 32]}]})),
        ("contents not the shape", raw_request(x, shape=[2, 3, 32, 32]), grpc.StatusCode.INVALID_ARGUMENT, None),
        ("not finite", raw_request(np.full_like(x, np.nan)), grpc.StatusCode.INVALID_ARGUMENT,
         "input contains NaN or infinity"),
        ("out of range", raw_request(np.full_like(x, 1e6)), grpc.StatusCode.INVALID_ARGUMENT, None),
    ]
    two_raw = raw_request(x)
    two_raw.raw_input_contents.append(x.tobytes())
    cases.append(("raw tensors not the inputs", two_raw, grpc.StatusCode.INVALID_ARGUMENT,
                  "raw_input_contents holds 2 tensors for 1 inputs"))
    huge = service_pb2.ModelInferRequest(model_name="demo")
    tensor = huge.inputs.add()
    tensor.name, tensor.datatype = INPUT, "FP32"
    tensor.shape.extend([1, 3, 32, 32])
    tensor.contents.fp32_contents.extend(np.zeros(4_000_000, np.float32).tolist())  # 16 MB of floats for 3072
    cases.append(("huge repeated field", huge, grpc.StatusCode.INVALID_ARGUMENT,
                  "input 'pixel_values': fp32_contents has 4000000 elements but shape [1, 3, 32, 32] needs 3072"))
    no_input = service_pb2.ModelInferRequest(model_name="demo")
    cases.append(("no input", no_input, grpc.StatusCode.INVALID_ARGUMENT, "missing input 'pixel_values'"))
    with channel:
        for what, request, code, message in cases:
            with pytest.raises(grpc.RpcError) as err:
                service.ModelInfer(request, timeout=30)
                pytest.fail(f"{what}: answered")
            assert err.value.code() == code, (what, err.value.details())
            if message is not None:
                assert err.value.details() == message, what
            assert_still_serves(client)
        # bytes that are not the shape: REST's binary tensor message, word for word
        err = _error(service, raw_request(images(2), shape=[1, 3, 32, 32]))
        assert err.value.details() == ("input 'pixel_values': binary_data_size is 24576 bytes but shape "
                                       "[1, 3, 32, 32] of FP32 needs 12288")


def _error(service: service_pb2_grpc.GRPCInferenceServiceStub,
           request: service_pb2.ModelInferRequest) -> pytest.ExceptionInfo[grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as err:
        service.ModelInfer(request, timeout=30)
    return err


def test_a_message_over_the_body_limit_is_resource_exhausted(client: grpcclient.InferenceServerClient,
                                                              server: ServerProcess) -> None:
    """The limit is the REST body limit (`--max-body-bytes`, 32 MiB by default): gRPC refuses a larger message
    before it is parsed."""
    big = np.zeros(9_000_000, np.float32)  # 36 MB
    channel, service = stub(server)
    with channel:
        err = _error(service, raw_request(big, shape=[1, 3, 32, 32]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert_still_serves(client)


def test_a_full_queue_is_resource_exhausted(server: ServerProcess) -> None:
    """TIGHT queues one image: of several requests at once, some are refused with REST's message."""

    async def main() -> list[object]:
        assert server.grpc_target is not None
        c = aioclient.InferenceServerClient(server.grpc_target)
        try:
            x = images(1)
            inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return list(await asyncio.gather(*(c.infer(TIGHT, [inp]) for _ in range(6)), return_exceptions=True))
        finally:
            await c.close()

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert refused and len(refused) < len(outcomes), outcomes
    assert all(o.status() == "StatusCode.RESOURCE_EXHAUSTED" and o.message() == f"model {TIGHT} queue is full"
               for o in refused), refused


def test_the_clients_deadline_is_the_requests_deadline(client: grpcclient.InferenceServerClient,
                                                       server: ServerProcess) -> None:
    """Behind at least two queued 400 ms batches a call with a 300 ms deadline is DEADLINE_EXCEEDED and never
    computed."""
    x = images(1)
    before = client.get_inference_statistics(SLOW).model_stats[0].inference_count
    answered_before = answered(server.base_url)

    async def main() -> tuple[list[object], object]:
        assert server.grpc_target is not None
        c = aioclient.InferenceServerClient(server.grpc_target)
        try:
            inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            busy = [asyncio.create_task(c.infer(SLOW, [inp])) for _ in range(4)]
            await asyncio.to_thread(wait_queued_behind, server.base_url, 4, 0, answered_before, max_done=1)
            late: object
            try:
                late = await c.infer(SLOW, [inp], client_timeout=0.3)
            except InferenceServerException as exc:
                late = exc
            return list(await asyncio.gather(*busy, return_exceptions=True)), late
        finally:
            await c.close()

    busy, late = asyncio.run(main())
    assert all(not isinstance(b, BaseException) for b in busy), busy
    assert isinstance(late, InferenceServerException) and late.status() == "StatusCode.DEADLINE_EXCEEDED", late
    stats = client.get_inference_statistics(SLOW).model_stats[0]
    assert stats.inference_count == before + 4  # the late one was never computed


def test_a_cancelled_call_leaves_the_queue_and_is_never_computed(client: grpcclient.InferenceServerClient,
                                                                 server: ServerProcess) -> None:
    x = images(1)
    before = client.get_inference_statistics(SLOW).model_stats[0].inference_count
    cancelled_before = metric(server.base_url, "vitserve_requests_total", model=SLOW, code="499", protocol="grpc")
    answered_before = answered(server.base_url)

    async def main() -> list[object]:
        assert server.grpc_target is not None
        c = aioclient.InferenceServerClient(server.grpc_target)
        try:
            inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            busy = [asyncio.create_task(c.infer(SLOW, [inp])) for _ in range(3)]
            await asyncio.to_thread(wait_queued_behind, server.base_url, 3, 0, answered_before)
            gone = [asyncio.create_task(c.infer(SLOW, [inp])) for _ in range(3)]
            await asyncio.to_thread(wait_queued_behind, server.base_url, 3, 3, answered_before)
            for task in gone:
                task.cancel()
            await asyncio.gather(*gone, return_exceptions=True)
            return list(await asyncio.gather(*busy, return_exceptions=True))
        finally:
            await c.close()

    busy = asyncio.run(main())
    assert all(not isinstance(b, BaseException) for b in busy), busy
    cancelled = wait_for_metric(server.base_url, "vitserve_requests_total", cancelled_before + 3, model=SLOW,
                                code="499", protocol="grpc")
    assert cancelled == cancelled_before + 3, server.log()[-2000:]
    assert client.get_inference_statistics(SLOW).model_stats[0].inference_count == before + 3
    assert metric(server.base_url, "vitserve_queue_depth", model=SLOW) == 0


def test_metrics_tell_grpc_from_rest(client: grpcclient.InferenceServerClient, server: ServerProcess) -> None:
    labels = {"model": "demo", "code": "200"}
    before = {p: metric(server.base_url, "vitserve_requests_total", protocol=p, **labels) for p in ("grpc", "http")}
    client.infer("demo", [grpc_input(images(1))])
    client.infer("demo", [grpc_input(images(1))])
    rest_logits(server.base_url, "demo", images(1))
    after = {p: metric(server.base_url, "vitserve_requests_total", protocol=p, **labels) for p in ("grpc", "http")}
    assert (after["grpc"] - before["grpc"], after["http"] - before["http"]) == (2, 1)
    assert metric(server.base_url, "vitserve_request_duration_seconds_count", endpoint="v2_infer", protocol="grpc",
                  **labels) >= 2
    with pytest.raises(InferenceServerException):
        client.infer("nope", [grpc_input(images(1))])
    assert metric(server.base_url, "vitserve_requests_total", model="_unknown", code="404", protocol="grpc") >= 1


def test_the_inference_key_guards_grpc_infer_too(tmp_path: Path) -> None:
    repo = build_grpc_repository(tmp_path / "repo")
    srv = start_server(repo, tmp_path, "--models", "demo", "--warmup", "one", grpc=True,
                       env={"VITSERVE_INFERENCE_API_KEY": "inference-key-0123"})
    try:
        assert srv.grpc_target is not None
        c = grpcclient.InferenceServerClient(srv.grpc_target)
        with pytest.raises(InferenceServerException) as err:
            c.infer("demo", [grpc_input(images(1))])
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        out = c.infer("demo", [grpc_input(images(1))], headers={"x-api-key": "inference-key-0123"})
        assert out.as_numpy(OUTPUT).shape == (1, 10)
        assert c.is_server_ready()  # health and metadata stay open
        c.close()
    finally:
        assert srv.stop() == 0


# -- ModelStreamInfer -------------------------------------------------------------------------------------------
def test_a_stream_answers_every_request_and_fails_bad_ones_in_band(client: grpcclient.InferenceServerClient,
                                                                   server: ServerProcess) -> None:
    """Through the sync client's stream: good requests get REST's logits under their ids; an unknown model and a
    wrong shape answer the unary call's messages in-band, and the requests after them are served on the stream."""
    x = images(2, seed=11)
    expected = rest_logits(server.base_url, "demo", x).tobytes()
    unary_errors = []
    for model, inputs in (("nope", [grpc_input(x)]), ("demo", [grpcclient.InferInput(INPUT, [2, 3, 16, 64], "FP32")])):
        if model == "demo":
            inputs[0].set_data_from_numpy(x.reshape(2, 3, 16, 64))
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs)
        unary_errors.append((model, inputs, err.value.message()))

    answers: list[tuple[object, object]] = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer("demo", [grpc_input(x)], request_id="a")
        for i, (model, inputs, _) in enumerate(unary_errors):
            client.async_stream_infer(model, inputs, request_id=f"bad{i}")
        client.async_stream_infer("demo", [grpc_input(x)], request_id="b", model_version="1")
    finally:
        client.stop_stream()  # waits for the server to answer every request sent
    served = {r.get_response().id: r.as_numpy(OUTPUT).tobytes() for r, e in answers if e is None}
    assert served == {"a": expected, "b": expected}
    failed = sorted(e.message() for r, e in answers if e is not None)
    assert failed == sorted(message for _, _, message in unary_errors)
    assert_still_serves(client)


def test_the_asyncio_clients_stream_beyond_the_in_flight_bound(server: ServerProcess) -> None:
    """More requests than a stream takes in flight at once (the rest wait unread): every one answered, by id."""
    from service.api.grpc.servicer import STREAM_IN_FLIGHT

    count = STREAM_IN_FLIGHT + 44
    x = images(1, seed=5)
    expected = rest_logits(server.base_url, "demo", x).tobytes()

    async def main() -> list[tuple[object, object]]:
        assert server.grpc_target is not None
        c = aioclient.InferenceServerClient(server.grpc_target)
        inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)

        async def requests():
            for i in range(count):
                yield {"model_name": "demo", "inputs": [inp], "request_id": str(i)}

        try:
            return [answer async for answer in c.stream_infer(requests())]
        finally:
            await c.close()

    answers = asyncio.run(main())
    assert all(error is None for _, error in answers), [e for _, e in answers if e is not None][:3]
    ids = [r.get_response().id for r, _ in answers]
    assert sorted(ids, key=int) == [str(i) for i in range(count)]
    assert all(r.as_numpy(OUTPUT).tobytes() == expected for r, _ in answers)


def test_a_cancelled_stream_withdraws_its_queued_requests(client: grpcclient.InferenceServerClient,
                                                          server: ServerProcess) -> None:
    """Five requests on one stream to the one-image-per-400-ms stand-in: cancelled while four wait in the queue,
    the waiting ones leave it (499 in the metrics) and are never computed."""
    x = images(1)
    before = client.get_inference_statistics(SLOW).model_stats[0].inference_count
    cancelled_before = metric(server.base_url, "vitserve_requests_total", model=SLOW, code="499", protocol="grpc")
    answered_before = answered(server.base_url)

    async def main() -> None:
        assert server.grpc_target is not None
        c = aioclient.InferenceServerClient(server.grpc_target)
        inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        sent = asyncio.Event()

        async def requests():
            for i in range(5):
                yield {"model_name": SLOW, "inputs": [inp], "request_id": str(i)}
            sent.set()
            await asyncio.sleep(3600)  # the stream stays open until cancelled

        async def consume() -> None:
            async for _ in c.stream_infer(requests()):
                pass

        task = asyncio.create_task(consume())
        try:
            await sent.wait()
            await asyncio.to_thread(wait_queued_behind, server.base_url, 1, 4, answered_before)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await c.close()

    asyncio.run(main())
    cancelled = wait_for_metric(server.base_url, "vitserve_requests_total", cancelled_before + 4, model=SLOW,
                                code="499", protocol="grpc")
    assert cancelled >= cancelled_before + 4, server.log()[-2000:]
    assert wait_for_metric(server.base_url, "vitserve_queue_depth", 0, model=SLOW) == 0
    assert client.get_inference_statistics(SLOW).model_stats[0].inference_count <= before + 1
