"""The HTTP edge in process (httpx ASGITransport + lifespan): every endpoint and every error status."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path

import httpx
import numpy as np
import pytest
from fakes import EchoRuntime, GatedRuntime, fake_factory
from PIL import Image

from service.app import create_app
from service.runtimes import RuntimeFactory, runtime_override
from service.settings import Settings

KEY = "test-api-key-123"


def png(w: int = 64, h: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, wait_for_models=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vitserve") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def run(settings: Settings, body: Callable[[httpx.AsyncClient], Awaitable[None]],
        factory: RuntimeFactory | None = None) -> None:
    """Serve with ONNX Runtime, or with `factory` in its place in the runtimes table."""

    async def main() -> None:
        async with client_for(settings) as client:
            await body(client)

    with runtime_override(factory) if factory is not None else nullcontext():
        asyncio.run(main())


@pytest.fixture
def settings(tiny_repository: Path) -> Settings:
    return Settings(repository=tiny_repository, warmup="one", api_key=KEY, max_body_bytes=4_000_000,
                    max_image_pixels=1_000_000)


def test_classify_accepts_multipart_raw_and_base64(settings: Settings) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        image = png()
        forms = [
            dict(files={"image": ("x.png", image, "image/png")}),
            dict(content=image, headers={"content-type": "image/png"}),
            dict(json={"image": base64.b64encode(image).decode()}),
            dict(json={"image": "data:image/png;base64," + base64.b64encode(image).decode()}),
        ]
        answers = []
        for kw in forms:
            r = await c.post("/v1/models/tiny_a/classify", params={"top_k": 3}, **kw)
            assert r.status_code == 200, r.text
            data = r.json()
            assert data["model"] == "tiny_a" and data["version"] == 1 and len(data["predictions"]) == 3
            assert set(data["timings"]) >= {"queue_ms", "preprocess_ms", "compute_ms", "total_ms", "batch_size"}
            assert "compute;dur=" in r.headers["server-timing"]
            answers.append([p["index"] for p in data["predictions"]])
        assert all(a == answers[0] for a in answers)

    run(settings, body)


def test_compare_runs_every_ready_model_and_reports_agreement(settings: Settings) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        r = await c.post("/v1/compare", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 200
        data = r.json()
        assert {e["model"] for e in data["results"]} == {"tiny_a", "tiny_b"}
        assert isinstance(data["top1_agree"], bool)
        r = await c.post("/v1/compare", params={"models": "tiny_a,tiny_corrupt"}, content=png(),
                         headers={"content-type": "image/png"})
        statuses = {e["model"]: e["status"] for e in r.json()["results"]}
        assert statuses == {"tiny_a": 200, "tiny_corrupt": 503}
        assert (await c.post("/v1/compare", params={"models": "nope"}, content=png(),
                             headers={"content-type": "image/png"})).status_code == 404

    run(settings, body)


def test_models_listing_shows_state_reason_provider_and_costs(settings: Settings) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
        assert models["tiny_a"]["state"] == "ready" and models["tiny_a"]["provider"] == "CPUExecutionProvider"
        assert models["tiny_a"]["flops"] > 0 and models["tiny_a"]["batching"]["max_batch_size"] == 8
        assert models["tiny_badsha"]["state"] == "failed" and "sha256" in models["tiny_badsha"]["reason"]

    run(settings, body)


@pytest.mark.parametrize(
    "path, kw, status",
    [
        ("/v1/models/tiny_a/classify", dict(content=b"not an image", headers={"content-type": "image/png"}), 415),
        ("/v1/models/tiny_a/classify", dict(content=png()[:60], headers={"content-type": "image/png"}), 400),
        ("/v1/models/tiny_a/classify", dict(content=png(), headers={"content-type": "text/plain"}), 415),
        ("/v1/models/tiny_a/classify", dict(content=png()), 415),
        ("/v1/models/tiny_a/classify", dict(json={"image": "***"}), 400),
        ("/v1/models/tiny_a/classify", dict(json={"picture": "x"}), 400),
        ("/v1/models/tiny_a/classify", dict(content=b"{", headers={"content-type": "application/json"}), 400),
        ("/v1/models/tiny_a/classify", dict(content=b"[" * 20000 + b"]" * 20000,
                                            headers={"content-type": "application/json"}), 400),
        ("/v1/models/tiny_a/classify", dict(content=b"--x\r\nbroken", headers={
            "content-type": "multipart/form-data; boundary=x"}), 400),
        ("/v1/models/tiny_a/classify", dict(files={"other": ("x.png", png(), "image/png")}), 400),
        ("/v1/models/tiny_a/classify?top_k=0", dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("/v1/models/tiny_a/classify?top_k=abc", dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("/v1/models/tiny_a/classify?top_k=1000", dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("/v1/models/tiny_a/classify?deadline_ms=-1", dict(content=png(), headers={"content-type": "image/png"}), 400),
        ("/v1/models/tiny_a/classify", dict(content=png(1200, 1000), headers={"content-type": "image/png"}), 413),
        ("/v1/models/tiny_a/classify", dict(content=b"x" * 4_100_000, headers={"content-type": "image/png"}), 413),
        ("/v1/models/nope/classify", dict(content=png(), headers={"content-type": "image/png"}), 404),
        ("/v1/models/..%2Fetc/classify", dict(content=png(), headers={"content-type": "image/png"}), 404),
        ("/v1/models/tiny_corrupt/classify", dict(content=png(), headers={"content-type": "image/png"}), 503),
        ("/v1/models/tiny_a/classify?version=7", dict(content=png(), headers={"content-type": "image/png"}), 404),
        ("/v2/repository/models/tiny_a/load", dict(), 401),
        ("/v2/repository/models/tiny_a/unload", dict(headers={"authorization": "Bearer wrong-key-123"}), 401),
    ],
)
def test_error_statuses_are_json(settings: Settings, path: str, kw: dict, status: int) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        r = await c.post(path, **kw)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"error"} and r.json()["error"]
        assert "Traceback" not in r.text

    run(settings, body)


def test_body_limit_applies_while_streaming_without_content_length(settings: Settings) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(50):
                yield b"x" * 100_000

        r = await c.post("/v1/models/tiny_a/classify", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "error" in r.json()

    run(settings, body)


def test_v2_json_infer_matches_onnx_runtime_in_process(settings: Settings, tiny_repository: Path) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tiny_repository / "tiny_b" / "2" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"pixel_values": x})[0]

    async def body(c: httpx.AsyncClient) -> None:
        req = {"id": "r1", "inputs": [{"name": "pixel_values", "shape": [2, 3, 32, 32], "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}
        r = await c.post("/v2/models/tiny_b/infer", json=req)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_name"] == "tiny_b" and out["model_version"] == "2" and out["id"] == "r1"
        got = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        r = await c.post("/v2/models/tiny_b/versions/2/infer", json=req)
        assert r.status_code == 200
        assert (await c.post("/v2/models/tiny_b/versions/1/infer", json=req)).status_code == 503  # not loaded
        assert (await c.post("/v2/models/tiny_b/versions/9/infer", json=req)).status_code == 404
        bad_shape = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 31], "datatype": "FP32",
                                 "data": [0.0] * (3 * 32 * 31)}]}
        assert (await c.post("/v2/models/tiny_b/infer", json=bad_shape)).status_code == 400
        wrong_count = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "data": [0.0] * 5}]}
        assert (await c.post("/v2/models/tiny_b/infer", json=wrong_count)).status_code == 400
        wrong_type = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "INT64",
                                  "data": [0] * 3072}]}
        assert (await c.post("/v2/models/tiny_b/infer", json=wrong_type)).status_code == 400
        huge = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                            "data": [0.0] * (8 * 3072 * 30)}]}  # far more than any legal request
        r = await c.post("/v2/models/tiny_b/infer", json=huge)
        assert r.status_code == 413 and "binary tensor extension" in r.json()["error"]
        r = await c.post("/v2/models/tiny_b/infer", content=b"{}xx", headers={
            "Inference-Header-Content-Length": "999", "content-type": "application/octet-stream"})
        assert r.status_code == 400 and "error" in r.json()

    run(settings, body)


def test_v2_binary_extension_round_trip(settings: Settings) -> None:
    x = np.random.default_rng(2).normal(size=(3, 3, 32, 32)).astype(np.float32)

    async def body(c: httpx.AsyncClient) -> None:
        header = (
            '{"inputs":[{"name":"pixel_values","shape":[3,3,32,32],"datatype":"FP32",'
            f'"parameters":{{"binary_data_size":{x.nbytes}}}}}],'
            '"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}'
        ).encode()
        r = await c.post("/v2/models/tiny_a/infer", content=header + x.tobytes(), headers={
            "Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        n = int(r.headers["Inference-Header-Content-Length"])
        import json

        meta = json.loads(r.content[:n])
        logits = np.frombuffer(r.content[n:], dtype=np.float32).reshape(meta["outputs"][0]["shape"])
        json_r = await c.post("/v2/models/tiny_a/infer", json={"inputs": [
            {"name": "pixel_values", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]})
        np.testing.assert_allclose(logits, np.asarray(json_r.json()["outputs"][0]["data"]).reshape(3, 10), rtol=1e-6)

    run(settings, body)


def test_v2_metadata_health_config_stats_and_repository(settings: Settings) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get("/v2")).json()["name"] == "vitserve"
        assert (await c.get("/v2/health/live")).status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 200
        meta = (await c.get("/v2/models/tiny_b")).json()
        assert meta["versions"] == ["2"] and meta["inputs"][0] == {"name": "pixel_values", "datatype": "FP32",
                                                                     "shape": [-1, 3, 32, 32]}
        assert (await c.get("/v2/models/tiny_b/versions/2")).status_code == 200
        assert (await c.get("/v2/models/tiny_b/ready")).status_code == 200
        assert (await c.get("/v2/models/tiny_corrupt/ready")).status_code == 503
        assert (await c.get("/v2/models/nope/ready")).status_code == 404
        cfg = (await c.get("/v2/models/tiny_a/config")).json()
        assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, 32, 32]
        await c.post("/v2/models/tiny_a/infer", json={"inputs": [
            {"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}]})
        stats = (await c.get("/v2/models/tiny_a/stats")).json()["model_stats"][0]
        assert stats["name"] == "tiny_a" and stats["inference_stats"]["success"]["count"] == 1
        index = {e["name"]: e for e in (await c.post("/v2/repository/index")).json()}
        assert index["tiny_a"]["state"] == "READY" and index["tiny_corrupt"]["state"] == "UNAVAILABLE"
        auth = {"authorization": f"Bearer {KEY}"}
        r = await c.post("/v2/repository/models/tiny_a/unload", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "unloaded"
        assert (await c.get("/v2/models/tiny_a/ready")).status_code == 503
        r = await c.post("/v2/repository/models/tiny_a/load", headers={"x-api-key": KEY})
        assert r.status_code == 200 and r.json()["state"] == "ready"
        assert (await c.post("/v2/repository/models/tiny_corrupt/load", headers=auth)).status_code == 400
        assert (await c.post("/v2/repository/models/nothere/load", headers=auth)).status_code == 404

    run(settings, body)


def test_full_queue_answers_503_with_retry_after_and_deadline_504(tiny_repository: Path) -> None:
    class Gated(GatedRuntime):
        def warmup(self, batch_sizes):
            pass

    factory = fake_factory(Gated)
    settings = Settings(repository=tiny_repository, models=["tiny_a"], max_queue_size=8, warmup="one")

    async def body(c: httpx.AsyncClient) -> None:
        rt = factory.instances[-1]  # type: ignore[attr-defined]
        req = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0] * 3072}]}
        first = asyncio.create_task(c.post("/v2/models/tiny_a/infer", json=req))
        while not rt.entered.is_set():
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(c.post("/v2/models/tiny_a/infer", json=req)) for _ in range(8)]
        store = c.app.state.store  # type: ignore[attr-defined]
        while store.version("tiny_a").executor.queued_images < 8:
            await asyncio.sleep(0.001)
        r = await c.post("/v2/models/tiny_a/infer", json=req)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "full" in r.json()["error"]
        timed = dict(req, parameters={"timeout": 20_000})  # Triton's timeout, microseconds
        r = await c.post("/v2/models/tiny_a/infer", json=timed)
        assert r.status_code == 503  # still full: rejection comes before the deadline
        rt.gate.set()
        assert all(x.status_code == 200 for x in await asyncio.gather(first, *queued))
        metrics = (await c.get("/metrics")).text
        assert 'vitserve_rejected_total{model="tiny_a",reason="queue_full"} 2.0' in metrics

    run(settings, body, factory)


def test_deadline_over_http_is_504_and_never_computed(tiny_repository: Path) -> None:
    class Gated(GatedRuntime):
        def warmup(self, batch_sizes):
            pass

    factory = fake_factory(Gated)
    settings = Settings(repository=tiny_repository, models=["tiny_a"], warmup="one")

    async def body(c: httpx.AsyncClient) -> None:
        rt = factory.instances[-1]  # type: ignore[attr-defined]
        req = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0] * 3072}]}
        first = asyncio.create_task(c.post("/v2/models/tiny_a/infer", json=req))
        while not rt.entered.is_set():
            await asyncio.sleep(0.001)
        late = dict(req, inputs=[dict(req["inputs"][0], data=[7.0] * 3072)], parameters={"timeout": 20_000})
        r = await c.post("/v2/models/tiny_a/infer", json=late)
        assert r.status_code == 504
        r = await c.post("/v1/models/tiny_a/classify", params={"deadline_ms": 20}, content=png(),
                         headers={"content-type": "image/png"})
        assert r.status_code == 504
        rt.gate.set()
        assert (await first).status_code == 200
        assert 7.0 not in rt.computed_ids

    run(settings, body, factory)


def test_inference_api_key_when_configured(tiny_repository: Path) -> None:
    settings = Settings(repository=tiny_repository, models=["tiny_a"], inference_api_key="infer-key-123", warmup="one")

    async def body(c: httpx.AsyncClient) -> None:
        r = await c.post("/v1/models/tiny_a/classify", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 401
        r = await c.post("/v1/models/tiny_a/classify", content=png(),
                         headers={"content-type": "image/png", "x-api-key": "infer-key-123"})
        assert r.status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 200

    run(settings, body, fake_factory(EchoRuntime))


def test_metrics_and_openapi(settings: Settings) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        await c.post("/v1/models/tiny_a/classify", content=png(), headers={"content-type": "image/png"})
        await c.post("/v1/models/not_a_model/classify", content=png(), headers={"content-type": "image/png"})
        text = (await c.get("/metrics")).text
        for name in ("vitserve_request_duration_seconds_bucket", "vitserve_queue_duration_seconds_bucket",
                     "vitserve_preprocess_duration_seconds_bucket", "vitserve_compute_duration_seconds_bucket",
                     "vitserve_batch_size_bucket", "vitserve_requests_total", "vitserve_inferences_total",
                     "vitserve_flops_total", "vitserve_queue_depth", "vitserve_model_ready",
                     "vitserve_model_flops", "vitserve_model_parameters", "vitserve_model_load_seconds"):
            assert name in text, name
        assert 'vitserve_model_ready{model="tiny_a",provider="CPUExecutionProvider",version="1"} 1.0' in text
        # bounded label values
        assert 'vitserve_requests_total{code="404",model="_unknown",protocol="http"} 1.0' in text
        spec = (await c.get("/openapi.json")).json()
        for path in ("/v1/models/{model}/classify", "/v1/compare", "/v1/models", "/v2/models/{model}/infer",
                     "/v2/health/ready", "/v2/repository/index", "/metrics"):
            assert path in spec["paths"], path
        assert "multipart/form-data" in spec["paths"]["/v1/models/{model}/classify"]["post"]["requestBody"]["content"]
        assert (await c.get("/docs")).status_code == 200

    run(settings, body)
