"""Broken models beside working ones: only the affected model (or batch) fails, with its reason visible.

Load-time breakage: corrupt ONNX, missing model file, sha256 mismatch, a manifest naming another model,
an unreadable config.pbtxt, a missing manifest. Run-time breakage: `tiny_batch1`, whose graph only runs
at batch 1, so ONNX Runtime fails every batch of two or more. A broken new version must not take down
the version that serves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from reliability_load import Request, make_session, open_loop, summary
from reliability_support import (
    API_KEY,
    BATCH_ONE,
    FIGURES,
    GoodTraffic,
    ServerProcess,
    TinyModel,
    assert_clean_error,
    batch_one_only_onnx,
    build_tiny_repository,
    metric,
    start_server,
    write_custom_model,
)

BROKEN_REASONS = {
    "tiny_corrupt": "session",
    "tiny_badsha": "sha256",
    "tiny_missing": "model.onnx",
    "tiny_wrongname": "names the model",
    "tiny_badconfig": "config.pbtxt",
    "tiny_nomanifest": "vitserve.json",
}


def broken_repository(root: Path) -> Path:
    build_tiny_repository(root, [
        TinyModel("tiny_a"),
        TinyModel("tiny_corrupt", breakage="corrupt_onnx"),
        TinyModel("tiny_badsha", breakage="sha_mismatch"),
        TinyModel("tiny_missing", breakage="missing_file"),
        TinyModel("tiny_wrongname"),
        TinyModel("tiny_badconfig"),
        TinyModel("tiny_nomanifest"),
    ])
    manifest = root / "tiny_wrongname" / "vitserve.json"
    data = json.loads(manifest.read_text())
    data["name"] = "tiny_a"
    manifest.write_text(json.dumps(data))
    (root / "tiny_badconfig" / "config.pbtxt").write_text('name: "tiny_badconfig"\nmax_batch_size: {{{ nonsense\n')
    (root / "tiny_nomanifest" / "vitserve.json").unlink()
    write_custom_model(root, BATCH_ONE, batch_one_only_onnx)
    return root


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = broken_repository(tmp_path_factory.mktemp("broken_repo"))
    srv = start_server(root, tmp_path_factory.mktemp("broken"), "--warmup", "one")
    try:
        yield srv, root
    finally:
        code = srv.stop()
        assert code == 0, srv.log()[-3000:]


def test_each_load_failure_is_reported_with_its_reason_and_the_rest_serve(
    broken_server: tuple[ServerProcess, Path],
) -> None:
    server, root = broken_server
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        assert c.get("/v2/health/ready").status_code == 200
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        metrics_text = c.get("/metrics").text
        for name, word in BROKEN_REASONS.items():
            info = models[name]
            assert info["state"] == "failed", info
            assert word in info["reason"], (name, info["reason"])
            assert str(root) not in info["reason"], f"the reason leaks a server path: {info['reason']}"
            assert metric(metrics_text, "vitserve_model_state", model=name, state="failed") == 1.0
            assert c.get(f"/v2/models/{name}/ready").status_code == 503
            r = c.post(f"/v1/models/{name}/classify", content=b"\x89PNG", headers={"content-type": "image/png"})
            assert_clean_error(r, [503])
            r = c.post(f"/v2/models/{name}/infer", json={"inputs": []})
            assert_clean_error(r, [503])
        assert models["tiny_a"]["state"] == "ready" and models["tiny_batch1"]["state"] == "ready"
        assert metric(metrics_text, "vitserve_model_state", model="tiny_a", state="ready") == 1.0
        index = {e["name"]: e for e in c.post("/v2/repository/index").json()}
        assert all(index[n]["state"] == "UNAVAILABLE" and index[n]["reason"] for n in BROKEN_REASONS)
    FIGURES["broken_model_reasons"] = {n: models[n]["reason"][:90] for n in BROKEN_REASONS}


def test_a_runtime_error_fails_only_its_batch(broken_server: tuple[ServerProcess, Path]) -> None:
    server, _ = broken_server
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    req = Request("POST", f"{server.base_url}/v2/models/tiny_batch1/infer", body, {"content-type": "application/json"})
    before = httpx.get(server.base_url + "/metrics").text

    async def burst() -> list:
        async with make_session() as s:
            return await open_loop(s, lambda i: req, 500, 0.1)

    with GoodTraffic(server.base_url) as good:
        outcomes = asyncio.run(burst())
    good.check()
    failed = [o for o in outcomes if o.status == 500]
    assert failed, f"no batch of two or more formed: {summary(outcomes)}"
    assert all(o.status in (200, 500) for o in outcomes), summary(outcomes)
    for o in failed:
        text = o.body.decode()
        assert "Traceback" not in text and 'File "' not in text and "onnxruntime_src" not in text, text
        assert json.loads(text)["error"]
    after = httpx.get(server.base_url + "/metrics").text
    assert metric(after, "vitserve_batch_failures_total", model="tiny_batch1") > metric(
        before, "vitserve_batch_failures_total", model="tiny_batch1")
    assert metric(after, "vitserve_requests_total", model="tiny_batch1", code="500") >= len(failed)
    with httpx.Client(base_url=server.base_url, timeout=30) as c:  # the model keeps serving single requests
        assert c.post("/v2/models/tiny_batch1/infer", content=body,
                      headers={"content-type": "application/json"}).status_code == 200
        assert c.get("/v2/models/tiny_batch1/ready").status_code == 200
    FIGURES["runtime_error_burst"] = summary(outcomes)


def test_a_broken_new_version_leaves_the_serving_one_in_place(broken_server: tuple[ServerProcess, Path]) -> None:
    server, root = broken_server
    vdir = root / "tiny_a" / "2"
    vdir.mkdir()
    (vdir / "model.onnx").write_bytes(b"\x08\x07garbage onnx")
    auth = {"authorization": f"Bearer {API_KEY}"}
    with GoodTraffic(server.base_url) as good, httpx.Client(base_url=server.base_url, timeout=60) as c:
        r = c.post("/v2/repository/models/tiny_a/load", headers=auth)
        assert_clean_error(r, [400])  # the load failed (a deploy script must see it), the old version still serves
        info = c.get("/v1/models/tiny_a").json()
    good.check()
    assert info["state"] == "ready" and info["version"] == 1, info
    assert "reload failed" in info["reason"], info
