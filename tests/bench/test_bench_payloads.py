"""Request bodies: the v2 binary body is byte-for-byte what tritonclient builds; uploads decode."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from bench.payloads import (
    classify_request,
    encode_image,
    infer_request,
    parse_v2_binary_response,
    synthetic_image,
    v2_binary_body,
)
from bench.timings import parse_json_timings, parse_server_timing


def test_v2_binary_body_equals_tritonclient_request_body() -> None:
    tc = pytest.importorskip("tritonclient.http")
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4), dtype=np.float32)
    inp = tc.InferInput("pixel_values", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = tc.InferRequestedOutput("logits", binary_data=True)
    expected, expected_json = tc.InferenceServerClient.generate_request_body([inp], outputs=[out])
    body, json_size = v2_binary_body("pixel_values", x, "logits")
    assert json_size == expected_json
    assert body == expected


def test_infer_request_headers_carry_the_json_length_and_the_batch() -> None:
    spec = infer_request("demo", (4, 3, 8, 8))
    size = int(spec.headers["Inference-Header-Content-Length"])
    header = json.loads(spec.body[:size])
    assert header["inputs"][0]["shape"] == [4, 3, 8, 8]
    assert len(spec.body) - size == 4 * 3 * 8 * 8 * 4
    assert spec.images_per_request == 4
    assert spec.path == "/v2/models/demo/infer"


def test_v2_body_rejects_non_fp32_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="FP32"):
        v2_binary_body("x", np.zeros((1, 2), dtype=np.float64))
    with pytest.raises(ValueError, match="positive"):
        infer_request("m", (0, 3, 2, 2))


def test_parse_v2_binary_response_splits_header_and_tensor() -> None:
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = {"model_name": "m", "outputs": [{"name": "logits", "shape": [2, 3], "datatype": "FP32",
                                              "parameters": {"binary_data_size": logits.nbytes}}]}
    head = json.dumps(header).encode()
    _, outputs = parse_v2_binary_response(head + logits.tobytes(), len(head))
    np.testing.assert_array_equal(outputs["logits"], logits)


def test_parse_v2_json_response() -> None:
    body = json.dumps({"outputs": [{"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]})
    _, outputs = parse_v2_binary_response(body.encode(), None)
    np.testing.assert_array_equal(outputs["logits"], np.array([[1.5, 2.5]], dtype=np.float32))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_encoded_uploads_decode_to_the_synthetic_image_size(fmt: str) -> None:
    pixels = synthetic_image(40, 60)
    img = Image.open(io.BytesIO(encode_image(pixels, fmt)))  # type: ignore[arg-type]
    assert img.size == (60, 40)
    assert img.format == fmt.upper()


def test_multipart_classify_request_holds_the_image_bytes() -> None:
    data = encode_image(synthetic_image(16, 16), "png")
    spec = classify_request("demo", data, "png")
    assert spec.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert data in spec.body
    assert b'name="image"' in spec.body
    raw = classify_request("demo", data, "png", multipart=False)
    assert raw.body == data and raw.headers["Content-Type"] == "image/png"


def test_server_timing_header_is_parsed_into_seconds() -> None:
    timings = parse_server_timing('queue;dur=1.5, preprocess;desc="decode";dur=2, compute;dur=10.25, total;dur=14')
    assert timings == pytest.approx({"queue": 0.0015, "preprocess": 0.002, "compute": 0.01025, "total": 0.014})


def test_json_timings_units_follow_the_key_suffix() -> None:
    body = json.dumps({"timings": {"queue_ms": 2.0, "compute_s": 0.5, "total": 0.75, "note": "x"}}).encode()
    assert parse_json_timings(body) == pytest.approx({"queue": 0.002, "compute": 0.5, "total": 0.75})
    assert parse_json_timings(b"not json") == {}
