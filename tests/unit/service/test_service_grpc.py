"""The gRPC edge's pure parts: the error table's codes, the message translation, and serving without the extra."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from service.api.grpc import start_grpc
from service.api.grpc.codec import decode_infer_request, infer_response, parameters
from service.api.grpc.status import status_code
from service.api.v2_response import raw_outputs
from service.api.v2_wire import TensorSpec
from service.cli import build_parser, settings_from_args
from service.errors import (
    ClientClosedRequest,
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
    V2ProtocolError,
)
from service.settings import Settings

SPECS = {"pixel_values": TensorSpec("FP32", (3, 2, 2))}


@pytest.mark.parametrize(("error", "code"), [
    (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (V2ProtocolError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaType("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
    (ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
    (ShuttingDown("x"), grpc.StatusCode.UNAVAILABLE),
    (ClientClosedRequest("x"), grpc.StatusCode.CANCELLED),
    (DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (InferenceFailed("x"), grpc.StatusCode.INTERNAL),
])
def test_every_domain_error_has_tritons_grpc_code(error: ServiceError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def _request(x: np.ndarray, *, typed: bool = False) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", id="r1")
    request.parameters["timeout"].int64_param = 5000
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "pixel_values", "FP32"
    tensor.shape.extend(x.shape)
    if typed:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        request.raw_input_contents.append(x.tobytes())
    out = request.outputs.add()
    out.name = "logits"
    out.parameters["classification"].int64_param = 2
    return request


def test_raw_contents_decode_to_a_view_and_typed_contents_to_the_same_values() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 24
    request = _request(x)
    parsed, arrays = decode_infer_request(request, SPECS, 4)
    assert not arrays["pixel_values"].flags.owndata and np.array_equal(arrays["pixel_values"], x)
    assert parsed.id is None and parsed.parameters == {"timeout": 5000}  # shared between calls: the id is the message's
    assert parsed.outputs is not None and parsed.outputs[0].parameters == {"classification": 2}
    _, typed = decode_infer_request(_request(x, typed=True), SPECS, 4)
    assert typed["pixel_values"].tobytes() == x.tobytes()


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.inputs[0].shape.__setitem__(0, 3), "binary_data_size is 96 bytes but shape [3, 3, 2, 2] of FP32"),
    (lambda r: setattr(r.inputs[0], "datatype", "FP16"), "has datatype FP16, the model expects FP32"),
    (lambda r: r.inputs[0].shape.__setitem__(0, 9), "batch size 9 is outside 1..4"),
    (lambda r: setattr(r.inputs[0], "name", "other"), "unexpected input 'other'"),
    (lambda r: r.raw_input_contents.append(b"1234"), "raw_input_contents holds 2 tensors for 1 inputs"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "has both contents and raw_input_contents"),
    (lambda r: setattr(r, "id", "x" * 1025), "request id of 1025 characters"),
    (lambda r: r.parameters["timeout"].__setattr__("string_param", "soon"), "parameter 'timeout' must be"),
])
def test_bad_requests_get_the_rest_codecs_messages(change: object, message: str) -> None:
    request = _request(np.zeros((2, 3, 2, 2), np.float32))
    change(request)  # type: ignore[operator]
    with pytest.raises(V2ProtocolError, match=None) as err:
        decode_infer_request(request, SPECS, 4)
    assert message in str(err.value)


def test_a_huge_repeated_field_is_refused_by_its_count() -> None:
    request = _request(np.zeros((1, 3, 2, 2), np.float32), typed=True)
    request.inputs[0].contents.fp32_contents.extend([0.0] * 100_000)
    with pytest.raises(V2ProtocolError, match="fp32_contents has 100012 elements but shape \\[1, 3, 2, 2\\] needs 12"):
        decode_infer_request(request, SPECS, 4)


def test_parameters_and_the_answer() -> None:
    request = service_pb2.ModelInferRequest()
    request.parameters["a"].bool_param = True
    request.parameters["b"].string_param = "s"
    request.parameters["c"].double_param = 0.5
    assert parameters(request.parameters) == {"a": True, "b": "s", "c": 0.5}
    parsed, _ = decode_infer_request(_request(np.zeros((1, 3, 2, 2), np.float32)), SPECS, 4)
    logits = np.array([[0.1, 0.7, 0.2]], np.float32)
    response = infer_response("m", "1", "r1", raw_outputs({"logits": logits}, parsed, labels=["a", "b", "c"]))
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [1, 2])
    raw = response.raw_output_contents[0]
    assert raw[4:raw.index(b"b") + 1] == b"0.700000:1:b"


def test_without_the_extra_the_server_says_so_once_and_serves_rest(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "service.api.grpc.server", None)  # as if grpcio were not installed
    pipeline = SimpleNamespace(settings=SimpleNamespace(grpc_port=8001))
    with caplog.at_level(logging.INFO, logger="vitserve.grpc"):
        assert asyncio.run(start_grpc(pipeline, None)) is None  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "gRPC is off" in lines[0] and "pip install 'vitserve[grpc]'" in lines[0]


def test_grpc_port_flag_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITSERVE_GRPC_PORT", raising=False)
    assert Settings(repository=tmp_path).grpc_port == 8001  # Triton's
    monkeypatch.setenv("VITSERVE_GRPC_PORT", "0")
    assert Settings(repository=tmp_path).grpc_port == 0  # no gRPC endpoint
    args = build_parser().parse_args(["serve", "--repository", str(tmp_path), "--grpc-port", "9001"])
    assert settings_from_args(args).grpc_port == 9001  # the flag wins over the environment
    with pytest.raises(ValueError, match="grpc_port"):
        Settings(repository=tmp_path, grpc_port=70000)


def test_a_repeated_raw_message_is_checked_once_and_decoded_per_call() -> None:
    """The cached check (`_raw_plan`) and the general path give the same request and arrays."""
    from service.api.grpc.codec import infer_request
    from service.api.v2_codec import decode_tensors

    x, y = np.zeros((2, 3, 2, 2), np.float32), np.ones((2, 3, 2, 2), np.float32)
    first, a = decode_infer_request(_request(x), SPECS, 4)
    second, b = decode_infer_request(_request(y), SPECS, 4)
    assert first is second  # checked once
    assert np.array_equal(a["pixel_values"], x) and np.array_equal(b["pixel_values"], y)
    general, binary = infer_request(_request(y))
    arrays = decode_tensors(general, binary, expected_inputs=SPECS, max_batch_size=4)
    assert general.model_dump(exclude={"id"}) == second.model_dump(exclude={"id"})
    assert np.array_equal(arrays["pixel_values"], b["pixel_values"])
