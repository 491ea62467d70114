"""The v2 codec's caches give what the general path gives: the same request and tensors, or the same error.

`parse_infer_request` caches a header's checked outcome (service/api/v2_codec.py `_binary_plan`);
`encode_infer_response` caches an all-binary response header (service/api/v2_response.py
`_binary_response_header`). Each good and hostile request here is parsed with the cache (twice: a miss,
then a hit) and without it (the general path), and both must agree exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import service.api.v2_codec as codec
from service.api.v2_codec import parse_infer_request
from service.api.v2_response import encode_infer_response
from service.api.v2_wire import InferenceRequest, InferenceResponse, TensorSpec
from service.errors import V2ProtocolError

PIXELS = {"pixel_values": TensorSpec("FP32", (3, 4, 4))}
TWO = {"a": TensorSpec("FP32", (2,)), "b": TensorSpec("INT64", (-1,))}
FLAGS = {"flags": TensorSpec("BOOL", (3,)), "x": TensorSpec("FP32", (2,))}
TEXT = {"text": TensorSpec("BYTES", (2,))}


def outcome(body: bytes, header_length: int | None, specs: Mapping[str, Any], max_batch: int) -> tuple[Any, ...]:
    """What parsing gives, comparable across paths: the request and tensors, or the error's type and message."""
    try:
        request, arrays = parse_infer_request(body, header_length, expected_inputs=specs, max_batch_size=max_batch)
    except V2ProtocolError as exc:
        return ("error", type(exc).__name__, str(exc))
    tensors = {k: (v.dtype.str, v.shape, v.tobytes() if v.dtype != object else v.tolist()) for k, v in arrays.items()}
    return ("ok", request.model_dump(), list(arrays), tensors)


def both_paths(
    monkeypatch: pytest.MonkeyPatch, body: bytes, header_length: int | None, specs: Mapping[str, Any],
    max_batch: int = 8,
) -> tuple[Any, ...]:
    general_ = general(monkeypatch, body, header_length, specs, max_batch)
    first = outcome(body, header_length, specs, max_batch)
    again = outcome(body, header_length, specs, max_batch)
    assert first == general_
    assert again == general_
    return general_


def general(
    monkeypatch: pytest.MonkeyPatch, body: bytes, header_length: int | None, specs: Mapping[str, Any], max_batch: int
) -> tuple[Any, ...]:
    with monkeypatch.context() as m:
        m.setattr(codec, "PLAN_CACHE_HEADER_BYTES", -1)  # no header is small enough: the general path
        return outcome(body, header_length, specs, max_batch)


def binary_body(header: dict[str, Any] | bytes, tail: bytes) -> tuple[bytes, int]:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return raw + tail, len(raw)


def pixel_input(batch: int = 1, size: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "pixel_values", "shape": [batch, 3, 4, 4], "datatype": "FP32",
            "parameters": {"binary_data_size": 192 * batch if size is None else size}, **extra}


PIXEL_BYTES = np.arange(2 * 48, dtype="<f4").tobytes()

# (header, binary tail, specs, max_batch): well-formed and hostile variants of one binary request
CASES: list[tuple[dict[str, Any] | bytes, bytes, Mapping[str, Any], int]] = [
    ({"inputs": [pixel_input()]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input(2)], "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]},
     PIXEL_BYTES, PIXELS, 8),
    ({"id": "r1", "inputs": [pixel_input()], "parameters": {"timeout": 5000, "binary_data_output": True}},
     PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input(2)]}, PIXEL_BYTES, PIXELS, 1),  # batch over max_batch_size
    ({"inputs": [pixel_input()]}, PIXEL_BYTES[:192], {"pixel_values": ("FP32", [3, 4, 4])}, 8),  # tuple specs
    ({"inputs": [pixel_input()]}, PIXEL_BYTES[:191], PIXELS, 8),  # body shorter than binary_data_size
    ({"inputs": [pixel_input()]}, PIXEL_BYTES[:193], PIXELS, 8),  # a stray byte after the tensors
    ({"inputs": [pixel_input(size=100)]}, PIXEL_BYTES[:100], PIXELS, 8),  # size does not fit the shape
    ({"inputs": [pixel_input(size=-1)]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input(size="192")]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input(size=True)]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input(size=2**64)]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [{**pixel_input(), "shape": [1, 3, 4, 5]}]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [{**pixel_input(), "shape": [1, -3, 4, 4]}]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [{**pixel_input(), "shape": [1, 3, 4]}]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [{**pixel_input(), "shape": [1.5, 3, 4, 4]}]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [{**pixel_input(), "datatype": "FP16"}]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [{**pixel_input(), "name": "other"}]}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input(), pixel_input()]}, PIXEL_BYTES[:192] * 2, PIXELS, 8),  # given twice
    ({"inputs": [pixel_input(data=[0.0] * 48)]}, PIXEL_BYTES[:192], PIXELS, 8),  # data and binary_data_size
    ({"inputs": [{**pixel_input(), "parameters": {"shared_memory_region": "r"}}]}, b"", PIXELS, 8),
    ({"inputs": [{**pixel_input(), "parameters": {}}]}, b"", PIXELS, 8),  # neither data nor size
    ({"inputs": [pixel_input()], "parameters": {"binary_data_output": "yes"}}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input()], "parameters": {"timeout": -5}}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": [pixel_input()], "parameters": {"timeout": 10**400}}, PIXEL_BYTES[:192], PIXELS, 8),
    ({"inputs": []}, b"", PIXELS, 8),
    ({"inputs": [pixel_input()], "id": 7}, PIXEL_BYTES[:192], PIXELS, 8),
    (b'{"inputs": [', PIXEL_BYTES[:192], PIXELS, 8),  # not JSON
    (b"[]", b"", PIXELS, 8),
    # several inputs: errors must come in input order whichever input is wrong
    ({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                 {"name": "b", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}]},
     np.ones(2, "<f4").tobytes() + np.arange(3, dtype="<i8").tobytes(), TWO, 8),
    ({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
                 {"name": "b", "shape": [1, 3], "datatype": "INT32", "parameters": {"binary_data_size": 24}}]},
     bytes(28), TWO, 8),
    ({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
                 {"name": "b", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}]},
     np.arange(3, dtype="<i8").tobytes(), TWO, 8),  # JSON data beside a binary tensor
    ({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1.0, "x"]},
                 {"name": "b", "shape": [1, 3], "datatype": "INT32", "parameters": {"binary_data_size": 24}}]},
     bytes(24), TWO, 8),
    # BOOL and BYTES tensors: their checks read the tensor bytes
    ({"inputs": [{"name": "flags", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
                 {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
     bytes([0, 1, 1]) + bytes(8), FLAGS, 8),
    ({"inputs": [{"name": "flags", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
                 {"name": "x", "shape": [1, 2], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]},
     bytes([0, 2, 1]) + bytes(8), FLAGS, 8),  # a bad BOOL byte before a bad datatype: the BOOL error first
    ({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}]},
     b"\x02\x00\x00\x00hi\x01\x00\x00\x00!", TEXT, 8),
    ({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
     b"\x09\x00\x00\x00hi", TEXT, 8),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cached_parse_agrees_with_the_general_path(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    header, tail, specs, max_batch = CASES[case]
    body, length = binary_body(header, tail)
    both_paths(monkeypatch, body, length, specs, max_batch)


def test_the_cases_cover_success_and_each_kind_of_error(monkeypatch: pytest.MonkeyPatch) -> None:
    results = [both_paths(monkeypatch, *binary_body(h, t), s, b) for h, t, s, b in CASES]
    assert sum(r[0] == "ok" for r in results) >= 5
    assert len({r[2] for r in results if r[0] == "error"}) >= 25  # distinct messages, not one error repeated


def test_a_cached_header_still_decodes_each_request_own_tensor() -> None:
    header = json.dumps({"inputs": [pixel_input()]}).encode()
    seen = []
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 4, 4)).astype("<f4")
        _, arrays = parse_infer_request(header + x.tobytes(), len(header), expected_inputs=PIXELS, max_batch_size=8)
        np.testing.assert_array_equal(arrays["pixel_values"], x)
        seen.append(arrays["pixel_values"])
    assert not np.array_equal(seen[0], seen[1])


def test_the_same_header_under_other_model_inputs_or_limits_is_checked_again() -> None:
    body, length = binary_body({"inputs": [pixel_input(2)]}, PIXEL_BYTES)
    parse_infer_request(body, length, expected_inputs=PIXELS, max_batch_size=8)
    with pytest.raises(V2ProtocolError, match="batch size 2 is outside 1..1"):
        parse_infer_request(body, length, expected_inputs=PIXELS, max_batch_size=1)
    with pytest.raises(V2ProtocolError, match="does not match"):
        parse_infer_request(body, length, expected_inputs={"pixel_values": TensorSpec("FP32", (3, 8, 2))},
                            max_batch_size=8)
    with pytest.raises(V2ProtocolError, match="runs past the end"):
        parse_infer_request(body[:-4], length, expected_inputs=PIXELS, max_batch_size=8)


def test_a_large_header_takes_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    padding = "x" * (codec.PLAN_CACHE_HEADER_BYTES + 10)
    body, length = binary_body({"parameters": {"note": padding}, "inputs": [pixel_input()]}, PIXEL_BYTES[:192])
    before = codec._binary_plan.cache_info().currsize
    assert both_paths(monkeypatch, body, length, PIXELS)[0] == "ok"
    assert codec._binary_plan.cache_info().currsize == before


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_headers_agree_with_the_general_path(data: st.DataObject) -> None:
    """Random byte edits of a good header: every one gives the same answer with and without the cache."""
    header = bytearray(json.dumps({"inputs": [pixel_input(2)], "parameters": {"timeout": 100}}).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(header) - 1))
        header[at] = data.draw(st.sampled_from(b'0129-.,:[]{}" aeAZx'))
    tail_len = data.draw(st.sampled_from([384, 383, 385, 192, 0]))
    body, length = bytes(header) + bytes(tail_len), len(header)
    with pytest.MonkeyPatch.context() as m:
        expected = general(m, body, length, PIXELS, 8)
    assert outcome(body, length, PIXELS, 8) == expected
    assert outcome(body, length, PIXELS, 8) == expected


# --- response headers ----------------------------------------------------------------------------


def reference_header(model: str, version: str, request_id: str | None, outputs: list[dict[str, Any]]) -> bytes:
    """The JSON header as a fully validated pydantic response writes it."""
    response = InferenceResponse(model_name=model, model_version=version, id=request_id, outputs=outputs)
    return response.model_dump_json(exclude_none=True).encode()


@pytest.mark.parametrize("shape", [(1, 10), (4, 10), (2, 3, 5)])
@pytest.mark.parametrize("request_id", [None, "req-1"])
def test_binary_response_header_is_what_pydantic_writes(shape: tuple[int, ...], request_id: str | None) -> None:
    out = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    request = InferenceRequest.model_validate(
        {"id": request_id, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    for model, version in (("demo", "1"), ("démo ☃", "12")):  # twice each: a miss, then a hit
        for _ in range(2):
            body, headers = encode_infer_response(model, version, {"logits": out}, request)
            expected = reference_header(model, version, request_id, [
                {"name": "logits", "shape": list(shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": out.nbytes}}])
            assert body == expected + out.tobytes()
            assert headers["Inference-Header-Content-Length"] == str(len(expected))


def test_mixed_and_json_responses_are_what_pydantic_writes() -> None:
    outputs = {"logits": np.array([[1.5, -2.0]], np.float32), "ids": np.array([[3, 4]], np.int64)}
    request = InferenceRequest.model_validate(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "ids"}]})
    for _ in range(2):
        body, headers = encode_infer_response("demo", "1", outputs, request)
        expected = reference_header("demo", "1", None, [
            {"name": "logits", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [3, 4]}])
        assert body == expected + outputs["logits"].tobytes()
    plain = InferenceRequest.model_validate({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]})
    body, headers = encode_infer_response("demo", "1", {"logits": outputs["logits"]}, plain)
    assert body == reference_header("demo", "1", None, [
        {"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}])
    assert headers == {"Content-Type": "application/json"}


def test_classification_outputs_change_size_and_are_not_served_stale() -> None:
    scores = np.array([[0.1, 0.7, 0.2]], np.float32)
    request = InferenceRequest.model_validate(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": True, "classification": 1}}]})
    sizes = set()
    for labels in (None, ["a", "bbbbbbbb", "c"]):
        body, headers = encode_infer_response("demo", "1", {"logits": scores}, request, labels=labels)
        length = int(headers["Inference-Header-Content-Length"])
        header = json.loads(body[:length])
        assert header["outputs"][0]["parameters"]["binary_data_size"] == len(body) - length
        sizes.add(len(body) - length)
    assert len(sizes) == 2
