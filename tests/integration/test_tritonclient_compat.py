"""tritonclient[http] (sync and asyncio) against vitserve: JSON and binary tensors, metadata, health, stats."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from service_server import API_KEY, ServerProcess

httpclient = pytest.importorskip("tritonclient.http")
aio = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the importorskip: tritonclient is optional)


def url(server: ServerProcess) -> str:
    return server.base_url.removeprefix("http://")


def in_process(repo: Path, model: str, version: int, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(repo / model / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"pixel_values": x})[0]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_sync_client_infers_the_same_numbers_as_onnx_runtime(
    server: ServerProcess, service_repository: Path, binary_in: bool, binary_out: bool
) -> None:
    client = httpclient.InferenceServerClient(url=url(server))
    x = np.random.default_rng(4).normal(size=(4, 3, 32, 32)).astype(np.float32)
    inp = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
    result = client.infer("tiny_heavy", [inp], outputs=[out], request_id="abc")
    np.testing.assert_allclose(result.as_numpy("logits"), in_process(service_repository, "tiny_heavy", 1, x),
                               rtol=1e-4, atol=1e-5)
    assert result.get_response()["id"] == "abc"
    client.close()


def test_sync_client_metadata_health_stats_and_repository(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(url=url(server))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny_a") and not client.is_model_ready("tiny_corrupt")
    assert client.get_server_metadata()["name"] == "vitserve"
    meta = client.get_model_metadata("tiny_b")
    assert meta["versions"] == ["2"] and meta["outputs"][0]["shape"] == [-1, 5]
    assert client.get_model_config("tiny_a")["max_batch_size"] == 8
    x = np.zeros((1, 3, 32, 32), np.float32)
    inp = httpclient.InferInput("pixel_values", [1, 3, 32, 32], "FP32")
    inp.set_data_from_numpy(x)
    client.infer("tiny_b", [inp], model_version="2")
    stats = client.get_inference_statistics("tiny_b")["model_stats"][0]
    assert stats["inference_count"] >= 1
    index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert index["tiny_a"] == "READY"
    with pytest.raises(InferenceServerException):
        client.unload_model("tiny_b")  # no key: 401
    client.unload_model("tiny_b", headers={"Authorization": f"Bearer {API_KEY}"})
    assert not client.is_model_ready("tiny_b")
    client.load_model("tiny_b", headers={"Authorization": f"Bearer {API_KEY}"})
    assert client.is_model_ready("tiny_b")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [inp])
    bad = httpclient.InferInput("pixel_values", [1, 3, 16, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("tiny_a", [bad])
    client.close()


def test_async_client_concurrent_binary_requests(server: ServerProcess, service_repository: Path) -> None:
    xs = [np.random.default_rng(i).normal(size=(2, 3, 32, 32)).astype(np.float32) for i in range(16)]

    async def main() -> list[np.ndarray]:
        client = aio.InferenceServerClient(url=url(server))
        try:
            assert await client.is_server_ready()

            async def one(x: np.ndarray) -> np.ndarray:
                inp = aio.InferInput("pixel_values", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                res = await client.infer("tiny_heavy", [inp],
                                         outputs=[aio.InferRequestedOutput("logits", binary_data=True)])
                return res.as_numpy("logits")

            return await asyncio.gather(*(one(x) for x in xs))
        finally:
            await client.close()

    outs = asyncio.run(main())
    for x, got in zip(xs, outs, strict=True):
        np.testing.assert_allclose(got, in_process(service_repository, "tiny_heavy", 1, x), rtol=1e-4, atol=1e-5)
