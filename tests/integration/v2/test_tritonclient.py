"""The real `tritonclient.http` (sync and asyncio) against a live vitserve, unchanged.

Every number is checked against ONNX Runtime run in-process on the same model file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

ATOL = 1e-5


@pytest.fixture(scope="module")
def client(v2_server) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(v2_server.url, network_timeout=120.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(served_model):
    """logits of ONNX Runtime in-process on the served model file."""
    session = ort.InferenceSession(str(served_model.onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return run


def pixels(served_model, batch: int, seed: int) -> np.ndarray:
    dims = served_model.config.input[0].dims
    return np.random.default_rng(seed).standard_normal((batch, *dims)).astype(np.float32)


def make_input(x: np.ndarray, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_health_and_readiness(client, served_model) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(served_model.name)
    assert client.is_model_ready(served_model.name, str(served_model.version))
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "vitserve" and meta["version"]
    assert {"binary_tensor_data", "classification", "statistics"} <= set(meta["extensions"])


def test_model_metadata(client, served_model) -> None:
    meta = client.get_model_metadata(served_model.name)
    dims = served_model.config.input[0].dims
    assert meta["name"] == served_model.name
    assert str(served_model.version) in meta["versions"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, *dims]}]
    assert meta["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, *served_model.config.output[0].dims]}
    ]
    assert client.get_model_metadata(served_model.name, str(served_model.version))["name"] == served_model.name


def test_model_config_is_the_repository_config_in_triton_json(client, served_model) -> None:
    doc = client.get_model_config(served_model.name)
    served = json_format.ParseDict(doc, pb.ModelConfig())
    on_disk = text_format.Parse(served_model.config.to_pbtxt(), pb.ModelConfig())
    for field in ("name", "platform", "max_batch_size", "input", "output", "dynamic_batching", "version_policy"):
        assert getattr(served, field) == getattr(on_disk, field), field


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("input_binary", "output_binary"), [(False, False), (True, True), (True, False),
                                                             (False, True)])
def test_infer_matches_onnxruntime(client, served_model, reference, input_binary, output_binary, batch) -> None:
    x = pixels(served_model, batch, seed=batch * 10 + 2 * input_binary + output_binary)
    result = client.infer(
        served_model.name, [make_input(x, input_binary)],
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=output_binary)], request_id="req-42",
    )
    out = result.get_output("logits")
    assert ("binary_data_size" in (out.get("parameters") or {})) == output_binary
    assert out["shape"] == [batch, served_model.config.output[0].dims[0]] and out["datatype"] == "FP32"
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        served_model.name, str(served_model.version), "req-42")
    np.testing.assert_allclose(result.as_numpy("logits"), reference(x), atol=ATOL, rtol=0)


def test_infer_without_requested_outputs_on_an_explicit_version(client, served_model, reference) -> None:
    x = pixels(served_model, 2, seed=5)
    result = client.infer(served_model.name, [make_input(x, True)], model_version=str(served_model.version))
    assert "binary_data_size" in result.get_output("logits")["parameters"]  # binary_data_output, as Triton
    np.testing.assert_allclose(result.as_numpy("logits"), reference(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(client, served_model, reference, algorithm) -> None:
    x = pixels(served_model, 2, seed=6)
    result = client.infer(served_model.name, [make_input(x, True)], request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("logits"), reference(x), atol=ATOL, rtol=0)


def test_classification_extension(client, served_model, reference) -> None:
    x = pixels(served_model, 2, seed=7)
    result = client.infer(served_model.name, [make_input(x, True)],
                          outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    got = result.as_numpy("logits")
    assert got.shape == (2, 3)
    expected = reference(x)
    for row, scores in zip(got, expected, strict=True):
        parts = [item.decode().split(":", 2) for item in row]
        top = np.argsort(-scores, kind="stable")[:3]
        assert [int(p[1]) for p in parts] == top.tolist()
        assert [p[2] for p in parts] == [served_model.manifest.labels[i] for i in top]
        np.testing.assert_allclose([float(p[0]) for p in parts], scores[top], atol=1e-5)


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_errors_reach_the_client_with_status_and_message(client, served_model) -> None:
    x = pixels(served_model, 1, seed=8)
    wrong_shape = httpclient.InferInput("pixel_values", [1, 3, 7, 7], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 7, 7), np.float32))
    err = _error(lambda: client.infer(served_model.name, [wrong_shape]))
    assert err.status() == "400" and "does not match" in err.message()

    wrong_dtype = httpclient.InferInput("pixel_values", list(x.shape), "FP64")
    wrong_dtype.set_data_from_numpy(x.astype(np.float64))
    err = _error(lambda: client.infer(served_model.name, [wrong_dtype]))
    assert err.status() == "400" and "FP64" in err.message()

    err = _error(lambda: client.infer(served_model.name, [make_input(x, True)],
                                      outputs=[httpclient.InferRequestedOutput("nope")]))
    assert err.status() == "400" and "nope" in err.message()

    err = _error(lambda: client.infer("no_such_model", [make_input(x, True)]))
    assert err.status() == "404"
    err = _error(lambda: client.get_model_metadata("no_such_model"))
    assert err.status() == "404"


def test_timeout_parameter_is_the_request_deadline(client, served_model, reference) -> None:
    x = pixels(served_model, 1, seed=9)
    err = _error(lambda: client.infer(served_model.name, [make_input(x, True)], timeout=1))  # 1 microsecond
    assert err.status() == "504"
    result = client.infer(served_model.name, [make_input(x, True)], timeout=60_000_000)
    np.testing.assert_allclose(result.as_numpy("logits"), reference(x), atol=ATOL, rtol=0)


def test_inference_statistics_count_requests_and_images(client, served_model) -> None:
    def stats() -> dict:
        doc = client.get_inference_statistics(served_model.name)
        (entry,) = [s for s in doc["model_stats"] if s["version"] == str(served_model.version)]
        return entry

    before = stats()
    for seed in range(3):
        client.infer(served_model.name, [make_input(pixels(served_model, 2, seed=seed), True)])
    after = stats()
    assert after["name"] == served_model.name
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] >= 1
    assert after["last_inference"] > 0 and after["inference_stats"]["compute_infer"]["ns"] > 0
    all_models = client.get_inference_statistics()
    assert served_model.name in {s["name"] for s in all_models["model_stats"]}


def test_repository_extension(client, served_model) -> None:
    index = client.get_model_repository_index()
    (entry,) = [e for e in index if e["name"] == served_model.name]
    assert (entry["state"], entry["version"]) == ("READY", str(served_model.version))
    err = _error(lambda: client.unload_model(served_model.name))  # no API key configured: control is disabled
    assert err.status() == "401"
    assert client.is_model_ready(served_model.name)


def test_asyncio_client(v2_server, served_model, reference) -> None:
    async def scenario() -> None:
        client = aioclient.InferenceServerClient(v2_server.url)
        try:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready(served_model.name)
            meta = await client.get_model_metadata(served_model.name)
            assert meta["inputs"][0]["name"] == "pixel_values"
            config = await client.get_model_config(served_model.name)
            assert config["max_batch_size"] == served_model.config.max_batch_size

            # Concurrent requests of different sizes and encodings: each gets exactly its own rows back.
            cases = [(pixels(served_model, 1 + i % 3, seed=100 + i), i % 2 == 0, i % 3 == 0) for i in range(8)]
            results = await asyncio.gather(*[
                client.infer(served_model.name, [make_input(x, in_bin)],
                             outputs=[aioclient.InferRequestedOutput("logits", binary_data=out_bin)])
                for x, in_bin, out_bin in cases
            ])
            for (x, _, _), result in zip(cases, results, strict=True):
                np.testing.assert_allclose(result.as_numpy("logits"), reference(x), atol=ATOL, rtol=0)

            stats = await client.get_inference_statistics(served_model.name)
            assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= len(cases)
        finally:
            await client.close()

    asyncio.run(scenario())
