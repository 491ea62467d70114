"""A runtime added from this file alone, served by the real server: the one-file change of a new runtime.

This module is the plugin. Imported by the server (named in `VITSERVE_RUNTIME_MODULES`), its top level
registers `ToyEchoRuntime` in the runtimes table for `backend: "toy_echo"`; the test writes a model
whose config.pbtxt names that backend, starts `vitserve serve` as a subprocess and drives the model
over HTTP (/v1 and /v2). Nothing in service/ knows of this runtime.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.runtimes import InferenceRuntime, register_runtime

BACKEND = "toy_echo"


class ToyEchoRuntime(InferenceRuntime):
    """Logits = the first `num_classes` numbers of each image: a request can check it got its own rows."""

    provider = "ToyEchoProvider"

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        classes = self.spec.manifest.num_classes
        return np.ascontiguousarray(pixel_values.reshape(len(pixel_values), -1)[:, :classes], dtype=np.float32)


register_runtime(BACKEND, ToyEchoRuntime)


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from service_server import start_server
    from tiny_repository import TinyModel, triton_config, write_model

    root = tmp_path_factory.mktemp("toy_repo")
    model = TinyModel("toy")
    directory = write_model(root, model)
    triton_config(model).model_copy(update={"platform": BACKEND, "backend": BACKEND}).save(directory / "config.pbtxt")
    here = str(Path(__file__).resolve().parent)
    env = {"VITSERVE_RUNTIME_MODULES": Path(__file__).stem,
           "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
    srv = start_server(root, tmp_path_factory.mktemp("toy_server"), "--warmup", "one", env=env)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code}:\n{srv.log()[-3000:]}"


def test_a_runtime_registered_by_a_plugin_module_serves_over_http(toy_server) -> None:
    base = toy_server.base_url  # type: ignore[attr-defined]
    with httpx.Client(base_url=base, timeout=30) as c:
        info = c.get("/v1/models/toy").json()
        assert (info["state"], info["provider"]) == ("ready", "ToyEchoProvider")
        assert c.get("/v2/models/toy/config").json()["backend"] == BACKEND

        x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
        body = {"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = c.post("/v2/models/toy/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [2, 10]
        np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(2, 10),
                                   x.reshape(2, -1)[:, :10])

        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, "PNG")
        r = c.post("/v1/models/toy/classify?top_k=3", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1 and len(r.json()["predictions"]) == 3
