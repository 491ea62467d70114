"""The v2 codec against the real `tritonclient.http`: its request bodies parse, our responses decode."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import np_to_triton_dtype

from service.api.v2_codec import decode_content_encoding, parse_header_length, parse_infer_request, request_timeout_s
from service.api.v2_response import classify, encode_content_encoding, encode_infer_response
from service.api.v2_wire import HEADER_LENGTH_HEADER, InferenceRequest, TensorSpec, v2_to_numpy
from service.errors import PayloadTooLarge, UnsupportedMediaType, V2ProtocolError

PIXELS = {"pixel_values": TensorSpec("FP32", (3, 4, 4))}


def triton_body(arrays: dict[str, np.ndarray], binary: bool | dict[str, bool] = True, **kwargs):
    inputs = []
    for name, arr in arrays.items():
        inp = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=binary if isinstance(binary, bool) else binary[name])
        inputs.append(inp)
    return httpclient.InferenceServerClient.generate_request_body(inputs, **kwargs)


def decode(body: bytes, headers: dict[str, str]) -> httpclient.InferResult:
    return httpclient.InferenceServerClient.parse_response_body(
        body, header_length=headers.get(HEADER_LENGTH_HEADER), content_encoding=headers.get("Content-Encoding")
    )


def pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 4, 4)).astype(np.float32)


# --- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("batch", [1, 4])
def test_tritonclient_request_round_trips(binary: bool, batch: int) -> None:
    x = pixels(batch)
    body, header_length = triton_body({"pixel_values": x}, binary=binary, request_id="r-1")
    assert (header_length is None) == (not binary)
    request, arrays = parse_infer_request(body, header_length, expected_inputs=PIXELS, max_batch_size=4)
    np.testing.assert_array_equal(arrays["pixel_values"], x)
    assert arrays["pixel_values"].dtype == np.float32
    assert request.id == "r-1"
    assert all(i.data is None for i in request.inputs), "tensor data is not kept in the parsed request"


def test_every_datatype_round_trips_binary_and_json() -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "b": rng.integers(0, 2, (2, 3)).astype(bool),
        "u8": rng.integers(0, 255, (2, 3), dtype=np.uint8),
        "u64": rng.integers(0, 2**62, (2, 3), dtype=np.uint64),
        "i8": rng.integers(-128, 127, (2, 3), dtype=np.int8),
        "i16": rng.integers(-(2**15), 2**15 - 1, (2, 3), dtype=np.int16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (2, 3), dtype=np.int32),
        "i64": rng.integers(-(2**62), 2**62, (2, 3), dtype=np.int64),
        "f16": rng.standard_normal((2, 3)).astype(np.float16),
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f64": rng.standard_normal((2, 3)),
        "s": np.array([[b"a", b"", "é".encode()], [b"\x00\xff", b"xyz", b"q"]], dtype=np.object_),
    }
    specs = {n: TensorSpec(np_to_triton_dtype(a.dtype), (3,)) for n, a in arrays.items()}
    # Mixed: every other input binary, so binary offsets interleave with JSON inputs.
    modes = {n: i % 2 == 0 for i, n in enumerate(arrays)}
    modes["s"] = True  # non-UTF-8 bytes can only travel as binary
    for binary in (modes, True):
        body, hl = triton_body(arrays, binary=binary)
        _, got = parse_infer_request(body, hl, expected_inputs=specs, max_batch_size=2)
        for name, arr in arrays.items():
            assert got[name].dtype == (np.object_ if name == "s" else arr.dtype), name
            np.testing.assert_array_equal(got[name], arr, err_msg=name)


def test_bytes_input_as_json_strings() -> None:
    arr = np.array([["héllo", "wörld"]], dtype=np.object_)
    body, hl = triton_body({"s": arr}, binary=False)
    _, got = parse_infer_request(body, hl, expected_inputs={"s": ("BYTES", [2])}, max_batch_size=1)
    assert got["s"].tolist() == [["héllo".encode(), "wörld".encode()]]


@given(
    dtype=st.sampled_from([np.float32, np.float16, np.float64, np.int32, np.int64, np.uint8, np.bool_]),
    dims=st.lists(st.integers(0, 3), min_size=0, max_size=3),
    batch=st.integers(1, 3),
    binary=st.booleans(),
    seed=st.integers(0, 1000),
)
@settings(max_examples=60, deadline=None)
def test_random_tensors_round_trip(dtype, dims: list[int], batch: int, binary: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal([batch, *dims]) * 50).astype(dtype)
    body, hl = triton_body({"x": arr}, binary=binary)
    spec = {"x": TensorSpec(np_to_triton_dtype(arr.dtype), tuple(dims))}
    _, got = parse_infer_request(body, hl, expected_inputs=spec, max_batch_size=3)
    assert got["x"].shape == arr.shape and got["x"].dtype == arr.dtype
    np.testing.assert_array_equal(got["x"], arr)


def test_nested_json_data_is_row_major() -> None:
    x = pixels(2)
    body = json.dumps(
        {"inputs": [{"name": "pixel_values", "shape": [2, 3, 4, 4], "datatype": "FP32", "data": x.tolist()}]}
    ).encode()
    _, got = parse_infer_request(body, None, expected_inputs=PIXELS, max_batch_size=4)
    np.testing.assert_array_equal(got["pixel_values"], x)


def test_empty_and_absurd_shapes() -> None:
    spec = {"x": ("FP32", (-1, -1))}
    body = json.dumps({"inputs": [{"name": "x", "shape": [0, 5], "datatype": "FP32", "data": []}]}).encode()
    _, got = parse_infer_request(body, None, expected_inputs=spec, max_batch_size=0)
    assert got["x"].shape == (0, 5)
    body = json.dumps({"inputs": [{"name": "x", "shape": [0, 10**30], "datatype": "FP32", "data": []}]}).encode()
    with pytest.raises(V2ProtocolError, match="dimension above"):
        parse_infer_request(body, None, expected_inputs=spec, max_batch_size=0)


def test_dynamic_dims_and_unbatched_models() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, hl = triton_body({"x": arr})
    _, got = parse_infer_request(body, hl, expected_inputs={"x": ("FP32", (-1, 3))}, max_batch_size=0)
    np.testing.assert_array_equal(got["x"], arr)
    with pytest.raises(V2ProtocolError, match="does not match"):
        parse_infer_request(body, hl, expected_inputs={"x": ("FP32", (2, 3))}, max_batch_size=2)


def test_timeout_parameter_in_seconds() -> None:
    body, hl = triton_body({"pixel_values": pixels(1)}, timeout=250_000)
    request, _ = parse_infer_request(body, hl, expected_inputs=PIXELS, max_batch_size=4)
    assert request_timeout_s(request) == pytest.approx(0.25)
    body, hl = triton_body({"pixel_values": pixels(1)})
    request, _ = parse_infer_request(body, hl, expected_inputs=PIXELS, max_batch_size=4)
    assert request_timeout_s(request) is None


# --- malformed requests ---------------------------------------------------------------------------


def _json_request(**inp) -> bytes:
    tensor = {"name": "pixel_values", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0.0] * 48} | inp
    return json.dumps({"inputs": [tensor]}).encode()


def _binary_request(size: int, payload: bytes, **inp) -> tuple[bytes, int]:
    tensor = {"name": "pixel_values", "shape": [1, 3, 4, 4], "datatype": "FP32",
              "parameters": {"binary_data_size": size}} | inp
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + payload, len(header)


GOOD_BINARY = np.zeros((1, 3, 4, 4), np.float32).tobytes()


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "invalid inference request"),
        (b"[]", None, "invalid inference request"),
        (b'{"inputs": []}', None, "inputs"),
        (b'{"inputs": [{"name": "pixel_values"}]}', None, "shape"),
        (_json_request(shape=[1, 3, 4, 5]), None, "does not match"),
        (_json_request(shape=[3, 4, 4]), None, "does not match"),
        (_json_request(shape=[5, 3, 4, 4], data=[0.0] * 240), None, "batch size 5 is outside 1..4"),
        (_json_request(shape=[0, 3, 4, 4], data=[]), None, "batch size 0"),
        (_json_request(shape=[1, 3, -4, 4]), None, "negative"),
        (_json_request(shape=[1, 3, 4, "4"]), None, "shape"),
        (_json_request(datatype="FP64"), None, "datatype FP64, the model expects FP32"),
        (_json_request(data=[0.0] * 47), None, "47 elements but shape"),
        (_json_request(data=[[0.0] * 24, [0.0] * 23]), None, "ragged"),
        (_json_request(data=["1.0"] * 48), None, "must be numbers"),
        (_json_request(data=[None] * 48), None, "must be numbers"),
        (_json_request(data=[1e300] * 48), None, "out of range"),
        (_json_request(name="image"), None, "unexpected input 'image'"),
        (_json_request(data=None), None, "neither data nor binary_data_size"),
        (_json_request(parameters={"shared_memory_region": "r"}), None, "shared memory"),
        (json.dumps({"inputs": [json.loads(_json_request())["inputs"][0]] * 2}).encode(), None, "more than once"),
        (json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 4, 4], "datatype": "FP32",
                                 "data": [0.0] * 48}], "parameters": {"binary_data_output": "yes"}}).encode(),
         None, "binary_data_output"),
        (json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 4, 4], "datatype": "FP32",
                                 "data": [0.0] * 48}], "parameters": {"timeout": -1}}).encode(), None, "timeout"),
        (*_binary_request(len(GOOD_BINARY) - 4, GOOD_BINARY[:-4]), "binary_data_size is 188 bytes"),
        (*_binary_request(len(GOOD_BINARY) + 4, GOOD_BINARY), "runs past the end of the body"),
        (*_binary_request(-1, GOOD_BINARY), "non-negative integer"),
        (*_binary_request(len(GOOD_BINARY), GOOD_BINARY + b"xx"), "2 bytes of binary data"),
        (*_binary_request(len(GOOD_BINARY), GOOD_BINARY, data=[0.0] * 48), "both JSON data and binary_data_size"),
        (_binary_request(len(GOOD_BINARY), GOOD_BINARY)[0], None, "needs the Inference-Header-Content-Length"),
        (_binary_request(len(GOOD_BINARY), GOOD_BINARY)[0], 10**6, "the request body has only"),
        (_binary_request(len(GOOD_BINARY), GOOD_BINARY)[0], -3, "must not be negative"),
        (_binary_request(len(GOOD_BINARY), GOOD_BINARY)[0], 10, "invalid inference request"),
    ],
)
def test_malformed_requests_raise_clear_errors(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(V2ProtocolError, match=message) as info:
        parse_infer_request(body, header_length, expected_inputs=PIXELS, max_batch_size=4)
    assert info.value.status == 400


def test_missing_input_is_reported() -> None:
    specs = PIXELS | {"mask": TensorSpec("BOOL", (4,))}
    with pytest.raises(V2ProtocolError, match="missing input 'mask'"):
        parse_infer_request(_json_request(), None, expected_inputs=specs, max_batch_size=4)


@pytest.mark.parametrize(
    ("spec", "payload", "message"),
    [
        (("BOOL", (2,)), b"\x01\x02", "0 or 1"),
        (("BYTES", (2,)), struct.pack("<I", 1) + b"a", "1 BYTES elements"),
        (("BYTES", (1,)), struct.pack("<I", 9) + b"a", "runs past"),
        (("BYTES", (1,)), b"\x01\x00", "inside an element length"),
    ],
)
def test_malformed_binary_elements(spec: tuple[str, tuple[int, ...]], payload: bytes, message: str) -> None:
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, *spec[1]], "datatype": spec[0],
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    with pytest.raises(V2ProtocolError, match=message):
        parse_infer_request(header + payload, len(header), expected_inputs={"x": spec}, max_batch_size=1)


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [([1.5, 2.0], "INT32", "must be integers"), ([300, 1], "UINT8", "out of range"), ([1, 0], "BOOL", "true/false"),
     ([1, 2], "BYTES", "must be strings")],
)
def test_json_element_types_are_checked(data: list, datatype: str, message: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": data}]}).encode()
    with pytest.raises(V2ProtocolError, match=message):
        parse_infer_request(body, None, expected_inputs={"x": (datatype, (2,))}, max_batch_size=1)


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("0", 0), (" 12 ", 12)])
def test_parse_header_length(value: str | None, expected: int | None) -> None:
    assert parse_header_length(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "1.5", "-1"])
def test_parse_header_length_rejects_junk(value: str) -> None:
    with pytest.raises(V2ProtocolError, match="Inference-Header-Content-Length"):
        parse_header_length(value)


# --- responses ------------------------------------------------------------------------------------


def _request(outputs=None, **kwargs) -> InferenceRequest:
    body, hl = triton_body({"pixel_values": pixels(2)}, outputs=outputs, **kwargs)
    return parse_infer_request(body, hl, expected_inputs=PIXELS, max_batch_size=4)[0]


LOGITS = np.random.default_rng(7).standard_normal((2, 5)).astype(np.float32)
OUTPUTS = {"logits": LOGITS, "features": np.arange(6, dtype=np.int64).reshape(2, 3)}


@pytest.mark.parametrize("binary", [True, False])
def test_requested_outputs_decode_with_tritonclient(binary: bool) -> None:
    req = _request(outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)], request_id="abc")
    body, headers = encode_infer_response("demo", "1", OUTPUTS, req)
    assert (HEADER_LENGTH_HEADER in headers) == binary
    result = decode(body, headers)
    np.testing.assert_array_equal(result.as_numpy("logits"), LOGITS)
    assert result.as_numpy("features") is None, "only the requested output is returned"
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("demo", "1", "abc")


def test_no_requested_outputs_returns_all_binary_as_tritonclient_asks() -> None:
    req = _request()  # tritonclient sets binary_data_output=true when no outputs are named
    body, headers = encode_infer_response("demo", "1", OUTPUTS, req)
    assert headers["Content-Type"] == "application/octet-stream"
    result = decode(body, headers)
    for name, arr in OUTPUTS.items():
        assert result.get_output(name)["parameters"]["binary_data_size"] == arr.nbytes
        np.testing.assert_array_equal(result.as_numpy(name), arr)


def test_plain_json_request_gets_json_outputs() -> None:
    body = _json_request()
    req, _ = parse_infer_request(body, None, expected_inputs=PIXELS, max_batch_size=4)
    out, headers = encode_infer_response("demo", "1", {"logits": LOGITS}, req)
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(out)
    assert doc["outputs"][0]["shape"] == [2, 5] and doc["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_array_equal(np.array(doc["outputs"][0]["data"], np.float32).reshape(2, 5), LOGITS)
    assert "id" not in doc
    out, headers = encode_infer_response("demo", "1", {"logits": LOGITS}, req, binary_default=True)
    assert HEADER_LENGTH_HEADER in headers


def test_mixed_binary_and_json_outputs_in_requested_order() -> None:
    req = _request(outputs=[httpclient.InferRequestedOutput("features", binary_data=False),
                            httpclient.InferRequestedOutput("logits", binary_data=True)])
    body, headers = encode_infer_response("demo", "1", OUTPUTS, req)
    result = decode(body, headers)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["features", "logits"]
    assert "data" in result.get_output("features") and "data" not in result.get_output("logits")
    for name, arr in OUTPUTS.items():
        np.testing.assert_array_equal(result.as_numpy(name), arr)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_output(binary: bool) -> None:
    labels = ["cat", "dog", "eel", "fox", "gnu"]
    req = _request(outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)])
    body, headers = encode_infer_response("demo", "1", OUTPUTS, req, labels=labels)
    result = decode(body, headers)
    got = result.as_numpy("logits")
    assert got.shape == (2, 3) and result.get_output("logits")["datatype"] == "BYTES"
    for row, scores in zip(got, LOGITS, strict=True):
        top = np.argsort(-scores)[:3]
        parsed = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in row]
        assert [int(p[1]) for p in parsed] == top.tolist()
        assert [p[2] for p in parsed] == [labels[i] for i in top]
        np.testing.assert_allclose([float(p[0]) for p in parsed], scores[top], atol=1e-6)


def test_classify_clamps_count_and_orders_ties_by_index() -> None:
    out = classify(np.array([[1.0, 5.0, 10.0, 5.0]]), 10)
    assert [s.decode().split(":")[1] for s in out[0]] == ["2", "1", "3", "0"]
    assert classify(np.array([1.0, 3.0]), 1, batched=False).tolist() == [b"3.000000:1"]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([httpclient.InferRequestedOutput("nope")], "unexpected output 'nope'"),
        ([httpclient.InferRequestedOutput("logits"), httpclient.InferRequestedOutput("logits")], "more than once"),
    ],
)
def test_bad_requested_outputs(outputs, message: str) -> None:
    with pytest.raises(V2ProtocolError, match=message):
        encode_infer_response("demo", "1", OUTPUTS, _request(outputs=outputs))


def test_bad_output_parameters() -> None:
    req = InferenceRequest.model_validate(
        {"inputs": [{"name": "pixel_values", "shape": [1], "datatype": "FP32", "data": [1]}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]})
    with pytest.raises(V2ProtocolError, match="binary_data"):
        encode_infer_response("demo", "1", OUTPUTS, req)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_responses_decode_with_tritonclient(algorithm: str) -> None:
    body, headers = encode_infer_response("demo", "1", OUTPUTS, _request())
    body, headers = encode_content_encoding(body, headers, f"identity, {algorithm}")
    assert headers["Content-Encoding"] == algorithm
    np.testing.assert_array_equal(decode(body, headers).as_numpy("logits"), LOGITS)


def test_no_compression_unless_accepted() -> None:
    assert encode_content_encoding(b"x", {}, None) == (b"x", {})
    assert encode_content_encoding(b"x", {}, "gzip;q=0") == (b"x", {})


# --- request compression ------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress),
                                                    ("identity", lambda b: b), (None, lambda b: b)])
def test_decode_content_encoding(encoding, compress) -> None:
    body, hl = triton_body({"pixel_values": pixels(1)})
    plain = decode_content_encoding(compress(body), encoding, max_size=len(body))
    assert plain == body


def test_decode_content_encoding_limits_and_errors() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    with pytest.raises(PayloadTooLarge) as info:
        decode_content_encoding(bomb, "gzip", max_size=10_000)
    assert info.value.status == 413
    with pytest.raises(UnsupportedMediaType) as unsupported:
        decode_content_encoding(b"x", "br", max_size=10)
    assert unsupported.value.status == 415
    with pytest.raises(V2ProtocolError, match="not valid gzip"):
        decode_content_encoding(b"not gzip", "gzip", max_size=100)
    with pytest.raises(V2ProtocolError, match="truncated"):
        decode_content_encoding(gzip.compress(b"abc" * 100)[:-12], "gzip", max_size=1000)
    with pytest.raises(V2ProtocolError, match="7 bytes follow the end of the gzip data"):
        decode_content_encoding(gzip.compress(b"abc") + b"garbage", "gzip", max_size=1000)
    with pytest.raises(V2ProtocolError, match="more than one gzip member"):
        decode_content_encoding(gzip.compress(b"abc") + gzip.compress(b"def"), "gzip", max_size=1000)
    with pytest.raises(V2ProtocolError, match="1 bytes follow the end of the deflate data"):
        decode_content_encoding(zlib.compress(b"abc") + b"x", "deflate", max_size=1000)


def test_datatype_table() -> None:
    assert v2_to_numpy("FP32") == np.float32 and v2_to_numpy("BYTES") == np.object_
    with pytest.raises(V2ProtocolError, match="unsupported datatype 'BF16'"):
        v2_to_numpy("BF16")


def test_protocol_errors_are_service_invalid_input_and_value_errors() -> None:
    from service.errors import InvalidInput

    err = V2ProtocolError("bad")
    assert isinstance(err, InvalidInput) and isinstance(err, ValueError) and err.message == "bad"


# --- contracts and robustness -------------------------------------------------------------------


def test_golden_json_response() -> None:
    req = InferenceRequest.model_validate(
        {"id": "x", "inputs": [{"name": "pixel_values", "shape": [1], "datatype": "FP32", "data": [0]}]})
    body, headers = encode_infer_response("demo", "1", {"logits": np.array([[1.5, -2.0]], np.float32)}, req)
    assert body == (b'{"model_name":"demo","model_version":"1","id":"x","outputs":[{"name":"logits","shape":[1,2],'
                    b'"datatype":"FP32","data":[1.5,-2.0]}]}')
    assert headers == {"Content-Type": "application/json"}


def test_golden_binary_response() -> None:
    req = InferenceRequest.model_validate(
        {"inputs": [{"name": "pixel_values", "shape": [1], "datatype": "FP32", "data": [0]}],
         "parameters": {"binary_data_output": True}})
    body, headers = encode_infer_response("demo", "1", {"logits": np.array([[1.5, -2.0]], np.float32)}, req)
    header = (b'{"model_name":"demo","model_version":"1","outputs":[{"name":"logits","shape":[1,2],'
              b'"datatype":"FP32","parameters":{"binary_data_size":8}}]}')
    assert body == header + struct.pack("<2f", 1.5, -2.0)
    assert headers == {"Content-Type": "application/octet-stream", HEADER_LENGTH_HEADER: str(len(header))}


MIXED_BODY, MIXED_HL = triton_body(
    {"pixel_values": pixels(2), "mask": np.array([[True, False, True, True]] * 2)}, binary={"pixel_values": True,
                                                                                           "mask": False})
MIXED_SPECS = PIXELS | {"mask": TensorSpec("BOOL", (4,))}


@given(cut=st.integers(0, len(MIXED_BODY)), flips=st.lists(st.tuples(st.integers(0, len(MIXED_BODY) - 1),
                                                                     st.integers(0, 255)), max_size=4),
       header_shift=st.integers(-20, 20))
@settings(max_examples=300, deadline=None)
def test_corrupted_bodies_fail_only_with_protocol_errors(cut: int, flips, header_shift: int) -> None:
    body = bytearray(MIXED_BODY[:cut])
    for pos, value in flips:
        if pos < len(body):
            body[pos] = value
    try:
        _, arrays = parse_infer_request(bytes(body), MIXED_HL + header_shift, expected_inputs=MIXED_SPECS,
                                        max_batch_size=4)
    except V2ProtocolError as err:
        assert str(err)
    else:  # whatever parsed must still be exactly what the model declared
        assert arrays["pixel_values"].shape == (2, 3, 4, 4) and arrays["pixel_values"].dtype == np.float32
        assert arrays["mask"].shape == (2, 4) and arrays["mask"].dtype == np.bool_
