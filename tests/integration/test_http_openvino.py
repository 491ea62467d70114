"""The OpenVINO runtime through the real server: what is particular to it beside the runtime-level tests that run on
both runtimes (test_http_server.py, test_http_drain.py): a missing library or corrupt IR files fail one model
alone, hot reload and the multi-process mode serve IRs, and the inference precision reaches /v1/models."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from openvino_repository import add_version, convert_model, openvino_available
from service_server import start_server
from tiny_repository import TinyModel, build_tiny_repository, expected_logits, onnx_model

from service.manifest import Manifest, sha256_file
from service.model_config import ModelConfig

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed (make setup installs it)")

MODEL = TinyModel("tiny_a")


def infer(client: httpx.Client, name: str, x: np.ndarray) -> httpx.Response:
    return client.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})


@pytest.fixture(scope="module")
def mixed_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_a on ONNX Runtime, and OpenVINO twins of it: f32, bf16, with a truncated model.bin (sha256 updated,
    so the IR itself is what fails) and with a model.bin that does not match its sha256."""
    root = build_tiny_repository(tmp_path_factory.mktemp("mixed"), [MODEL])
    convert_model(root / "tiny_a", root / "ov_f32", "f32", name="ov_f32")
    convert_model(root / "tiny_a", root / "ov_bf16", "bf16", name="ov_bf16")
    for name in ("ov_truncated", "ov_badsha"):
        convert_model(root / "tiny_a", root / name, "f32", name=name)
        weights = root / name / "1" / "model.bin"
        weights.write_bytes(weights.read_bytes()[:7])
    manifest = Manifest.load(root / "ov_truncated")
    files = {**manifest.files, "1/model.bin": sha256_file(root / "ov_truncated" / "1" / "model.bin")}
    Manifest.model_validate({**manifest.model_dump(), "files": files}).save(root / "ov_truncated")
    return root


def test_corrupt_ir_files_fail_alone_and_precision_is_reported(mixed_repository: Path, tmp_path: Path) -> None:
    server = start_server(mixed_repository, tmp_path, "--warmup", "one")
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
            assert models["ov_truncated"]["state"] == "failed" and "cannot create session" in models[
                "ov_truncated"]["reason"]
            assert models["ov_badsha"]["state"] == "failed" and "sha256 mismatch for 1/model.bin" in models[
                "ov_badsha"]["reason"]
            assert models["ov_f32"]["provider"] == "OpenVINO CPU f32" and models["ov_f32"]["provider_note"] is None
            bf16 = models["ov_bf16"]
            # bf16 where the CPU has it; otherwise f32, and the note says why
            assert bf16["provider"] == "OpenVINO CPU bf16" or (
                bf16["provider"] == "OpenVINO CPU f32" and "no native bf16" in bf16["provider_note"])
            x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
            want = expected_logits(MODEL, 1, x)
            for name in ("tiny_a", "ov_f32", "ov_bf16"):
                r = infer(c, name, x)
                assert r.status_code == 200, r.text
                got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(want.shape)
                tolerance = 5e-2 if name == "ov_bf16" else 1e-4
                np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert server.log().count("no native bf16") <= 1  # one log line per process, not one per model or batch


def test_missing_openvino_fails_its_models_alone(mixed_repository: Path, tmp_path: Path) -> None:
    """`import openvino` fails in the server process (a shim module on its path): the OpenVINO models fail with
    the reason and how to install it; the ONNX Runtime model serves."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "openvino.py").write_text('raise ImportError("No module named \'openvino\' (hidden by the test)")\n')
    import os

    path = os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])
    server = start_server(mixed_repository, tmp_path, "--warmup", "one", env={"PYTHONPATH": path})
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
            assert models["tiny_a"]["state"] == "ready"
            for name in ("ov_f32", "ov_bf16"):
                assert models[name]["state"] == "failed"
                assert "OpenVINO is not installed (pip install 'vitserve[openvino]')" in models[name]["reason"]
            assert infer(c, "tiny_a", np.zeros((1, 3, 32, 32), np.float32)).status_code == 200
            assert infer(c, "ov_f32", np.zeros((1, 3, 32, 32), np.float32)).status_code == 503
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_hot_reload_and_http_workers_serve_openvino(tmp_path: Path) -> None:
    """Two front ends and one engine; a new IR version dropped into the repository replaces the served one."""
    model = TinyModel("tiny_b", num_classes=5, versions=[1])
    onnx_root = build_tiny_repository(tmp_path / "onnx", [model])
    root = tmp_path / "repo"
    convert_model(onnx_root / "tiny_b", root / "tiny_b")
    assert ModelConfig.load(root / "tiny_b" / "config.pbtxt").backend == "openvino"
    server = start_server(root, tmp_path, "--warmup", "one", "--http-workers", "2", "--poll-interval-s", "0.2")
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            r = infer(c, "tiny_b", x)
            assert r.status_code == 200 and r.json()["model_version"] == "1"
            v2 = tmp_path / "v2.onnx"
            onnx.save(onnx_model(model, 2), str(v2))
            add_version(root / "tiny_b", v2, 2)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and c.get("/v2/models/tiny_b/versions/2/ready").status_code != 200:
                time.sleep(0.1)

            async def burst() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=httpx.Limits(
                        max_connections=8, max_keepalive_connections=0)) as ac:
                    body = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}
                    return await asyncio.gather(*(ac.post("/v2/models/tiny_b/infer", json=body) for _ in range(16)))

            responses = asyncio.run(burst())
            assert {r.status_code for r in responses} == {200}
            assert {r.json()["model_version"] for r in responses} == {"2"}
            got = np.asarray(responses[0].json()["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(got, expected_logits(model, 2, x)[0], rtol=1e-4, atol=1e-4)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
