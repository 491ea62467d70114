"""The real server (uvicorn on loopback, started as `vitserve serve`) driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image
from service_server import API_KEY, ServerProcess, start_server
from tiny_repository import INTEGRATION_MODELS, expected_logits

HEAVY = next(m for m in INTEGRATION_MODELS if m.name == "tiny_heavy")
#: runtime-level: every test here runs on ONNX Runtime and on OpenVINO (tests/integration/conftest.py)
pytestmark = pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"], indirect=True, scope="module")
PLATFORM = {"onnxruntime": "onnxruntime_onnx", "openvino": ""}
PROVIDER = {"onnxruntime": "CPUExecutionProvider", "openvino": "OpenVINO CPU f32"}


def png(color: tuple[int, int, int] = (20, 120, 220)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (90, 70), color).save(buf, "PNG")
    return buf.getvalue()


def metric_samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_health_metadata_and_docs(server: ServerProcess, runtime: str) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2").json()["name"] == "vitserve"
        assert c.get("/v2/models/tiny_a").json()["platform"] == PLATFORM[runtime]
        assert c.get("/v2/models/tiny_b/versions/2/ready").status_code == 200
        assert c.get("/v2/models/tiny_a/config").json()["max_batch_size"] == 8
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
        assert "/v1/models/{model}/classify" in spec["paths"] and "/v2/models/{model}/infer" in spec["paths"]


def test_failed_models_are_reported_beside_working_ones(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["tiny_a"]["state"] == "ready" and models["tiny_heavy"]["state"] == "ready"
        assert models["tiny_corrupt"]["state"] == "failed" and models["tiny_corrupt"]["reason"]
        assert models["tiny_badsha"]["state"] == "failed" and "sha256" in models["tiny_badsha"]["reason"]
        assert c.get("/v2/models/tiny_corrupt/ready").status_code == 503
        r = c.post("/v1/models/tiny_badsha/classify", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 503 and "sha256" in r.json()["error"]
        index = {e["name"]: e["state"] for e in c.post("/v2/repository/index").json()}
        assert index == {"tiny_a": "READY", "tiny_b": "READY", "tiny_heavy": "READY",
                         "tiny_corrupt": "UNAVAILABLE", "tiny_badsha": "UNAVAILABLE"}
        metrics = c.get("/metrics").text
        assert 'vitserve_model_state{model="tiny_corrupt",state="failed"} 1.0' in metrics


def test_classify_in_three_encodings_and_compare(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        image = png()
        results = [
            c.post("/v1/models/tiny_a/classify", files={"image": ("a.png", image, "image/png")}),
            c.post("/v1/models/tiny_a/classify", content=image, headers={"content-type": "image/png"}),
            c.post("/v1/models/tiny_a/classify", json={"image": base64.b64encode(image).decode()}),
        ]
        assert [r.status_code for r in results] == [200, 200, 200]
        assert len({tuple(p["index"] for p in r.json()["predictions"]) for r in results}) == 1
        assert re.search(r"total;dur=[0-9.]+", results[0].headers["server-timing"])
        r = c.post("/v1/compare", params={"models": "tiny_a,tiny_b", "top_k": 2}, content=image,
                   headers={"content-type": "image/png"})
        assert r.status_code == 200
        body = r.json()
        assert [e["model"] for e in body["results"]] == ["tiny_a", "tiny_b"]
        assert all(len(e["predictions"]) == 2 for e in body["results"])
        assert isinstance(body["top1_agree"], bool)


@pytest.mark.parametrize(
    "method, path, kw, status",
    [
        ("post", "/v1/models/tiny_a/classify",
         dict(content=b"\x89PNG\r\n\x1a\nbroken", headers={"content-type": "image/png"}), 400),
        ("post", "/v1/models/tiny_a/classify", dict(content=b"hello", headers={"content-type": "text/plain"}), 415),
        ("post", "/v1/models/tiny_a/classify",
         dict(content=b"x" * (40 * 1024 * 1024), headers={"content-type": "image/png"}), 413),
        ("post", "/v1/models/missing/classify", dict(content=b"x", headers={"content-type": "image/png"}), 404),
        ("post", "/v1/models/tiny_a/classify?top_k=0", dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("post", "/v1/models/tiny_a/classify?top_k=two",
         dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("post", "/v1/models/tiny_a/classify?version=0",
         dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("post", "/v1/models/tiny_a/classify?deadline_ms=-1",
         dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("post", "/v1/models/tiny_a/classify?version=7",
         dict(content=png(), headers={"content-type": "image/png"}), 404),
        ("post", "/v2/models/tiny_a/versions/x/infer",
         dict(content=b"{}", headers={"content-type": "application/json"}), 404),
        ("get", "/v2/models/..%2F..%2Fetc%2Fpasswd", dict(), 404),
        ("post", "/v2/repository/models/tiny_a/unload", dict(), 401),
        ("post", "/v2/models/tiny_a/infer", dict(json={"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32],
                                                                    "datatype": "FP32", "data": [0.0]}]}), 400),
    ],
)
def test_error_statuses(server: ServerProcess, method: str, path: str, kw: dict, status: int) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        try:
            r = getattr(c, method)(path, **kw)
        except httpx.WriteError:  # the server answered 413 and closed before the whole body was sent
            assert status == 413
            return
        assert r.status_code == status, r.text
        assert "error" in r.json()


def test_v2_infer_matches_the_model_and_concurrent_requests_share_batches(server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(64)]

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as c:
            return await asyncio.gather(*(
                c.post("/v2/models/tiny_heavy/infer", json={"id": str(i), "inputs": [
                    {"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}
                ]})
                for i, x in enumerate(inputs)
            ))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 64
    for i, r in enumerate(responses):
        body = r.json()
        assert body["id"] == str(i)
        got = np.asarray(body["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, expected_logits(HEAVY, 1, inputs[i])[0], rtol=1e-4, atol=1e-4)
    text = httpx.get(server.base_url + "/metrics").text
    buckets = metric_samples(text, "vitserve_batch_size_bucket{")
    count = metric_samples(text, "vitserve_batch_size_count{")
    key = '{le="1.0",model="tiny_heavy",version="1"}'
    ones = buckets["vitserve_batch_size_bucket" + key]
    total = count['vitserve_batch_size_count{model="tiny_heavy",version="1"}']
    assert total > ones, "every batch had one image: concurrent requests did not share batches"
    inferences = metric_samples(text, "vitserve_inferences_total{")
    assert inferences['vitserve_inferences_total{model="tiny_heavy",version="1"}'] >= 64
    requests = metric_samples(text, "vitserve_requests_total{")
    assert requests['vitserve_requests_total{code="200",model="tiny_heavy",protocol="http"}'] >= 64
    stats = httpx.get(server.base_url + "/v2/models/tiny_heavy/stats").json()["model_stats"][0]
    assert stats["inference_count"] >= 64 and stats["execution_count"] < stats["inference_count"]


def test_metrics_after_traffic(server: ServerProcess, runtime: str) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        for _ in range(3):
            r = c.post("/v1/models/tiny_b/classify", content=png(), headers={"content-type": "image/png"})
            assert r.status_code == 200
        text = c.get("/metrics").text
    for name in ("request_duration_seconds", "queue_duration_seconds", "preprocess_duration_seconds",
                 "compute_duration_seconds", "batch_size"):
        assert f"# TYPE vitserve_{name} histogram" in text
    for name in ("requests_total", "inferences_total", "flops_total"):
        assert f"# TYPE vitserve_{name} counter" in text
    for name in ("queue_depth", "model_ready", "model_flops", "model_parameters", "model_load_seconds"):
        assert f"# TYPE vitserve_{name} gauge" in text
    assert metric_samples(text, 'vitserve_requests_total{code="200",model="tiny_b",protocol="http"}')
    assert metric_samples(text, 'vitserve_preprocess_duration_seconds_count{model="tiny_b"}')
    flops = metric_samples(text, 'vitserve_flops_total{model="tiny_b",version="2"}')
    assert list(flops.values())[0] > 0
    assert f'vitserve_model_ready{{model="tiny_b",provider="{PROVIDER[runtime]}",version="2"}} 1.0' in text


def test_repository_unload_and_load_with_the_api_key(server: ServerProcess) -> None:
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        bad_key = {"authorization": "Bearer nope-nope-nope"}
        assert c.post("/v2/repository/models/tiny_b/load", headers=bad_key).status_code == 401
        assert c.post("/v2/repository/models/tiny_b/unload", headers=auth).json()["state"] == "unloaded"
        assert c.get("/v2/models/tiny_b/ready").status_code == 503
        assert c.post("/v2/repository/models/tiny_b/load", headers=auth).json()["state"] == "ready"
        assert c.get("/v2/models/tiny_b/ready").status_code == 200


def test_execution_instances_from_settings_compute_batches_side_by_side(
    service_repository, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`--instances 2` (or instance_group count 2 in config.pbtxt): reported in /v1/models and in the
    Triton config, and concurrent requests still get exactly their own outputs."""
    srv = start_server(service_repository, tmp_path_factory.mktemp("instances"), "--models", "tiny_heavy",
                       "--warmup", "one", "--instances", "2")
    try:
        info = httpx.get(srv.base_url + "/v1/models/tiny_heavy").json()
        assert info["batching"]["instances"] == 2
        config = httpx.get(srv.base_url + "/v2/models/tiny_heavy/config").json()
        assert sum(g["count"] for g in config["instance_group"]) == 2
        rng = np.random.default_rng(11)
        inputs = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(48)]

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=60,
                                         limits=httpx.Limits(max_connections=48)) as c:
                return await asyncio.gather(*(
                    c.post("/v2/models/tiny_heavy/infer", json={"inputs": [
                        {"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                         "data": x.ravel().tolist()}
                    ]}) for x in inputs
                ))

        responses = asyncio.run(main())
        assert [r.status_code for r in responses] == [200] * len(inputs)
        for x, r in zip(inputs, responses, strict=True):
            got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(got, expected_logits(HEAVY, 1, x)[0], rtol=1e-4, atol=1e-4)
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
