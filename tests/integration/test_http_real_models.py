"""The real server on real exported ViT graphs (the coordinator's `demo_repository`, else a tiny build).

The tiny-graph suites pin exact numbers; this one checks that what export/ writes is what the
service serves: load with warm-up at every batch size, classify, compare, batching under load.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_server import ServerProcess, start_server

from service.manifest import Manifest


@pytest.fixture(scope="module")
def real_repository(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return Path(request.getfixturevalue("demo_repository"))
    except pytest.FixtureLookupError:
        pass
    pytest.importorskip("export.build")
    from repository_builder import build_test_repository

    return build_test_repository(tmp_path_factory.mktemp("real") / "repository", ["test", "test+cb"])


@pytest.fixture(scope="module")
def real_server(real_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(real_repository, tmp_path_factory.mktemp("real_server"), ready_timeout=300)
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def jpeg(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def test_models_load_with_their_manifests(real_server: ServerProcess, real_repository: Path) -> None:
    models = httpx.get(real_server.base_url + "/v1/models").json()["models"]
    assert models and all(m["state"] == "ready" for m in models)
    for m in models:
        manifest = Manifest.load(real_repository / m["name"])
        assert m["flops"] == manifest.costs.flops and m["variants"] == manifest.variants
        assert m["provider"] and m["load_seconds"] > 0


def test_classify_and_compare_on_real_graphs(real_server: ServerProcess) -> None:
    names = [m["name"] for m in httpx.get(real_server.base_url + "/v1/models").json()["models"]]
    with httpx.Client(base_url=real_server.base_url, timeout=60) as c:
        r = c.post(f"/v1/models/{names[0]}/classify", params={"top_k": 3}, content=jpeg(0),
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 200
        preds = r.json()["predictions"]
        assert len(preds) == 3 and abs(sum(p["score"] for p in preds)) <= 1.0 + 1e-6
        r = c.post("/v1/compare", content=jpeg(1), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200
        assert {e["model"] for e in r.json()["results"]} == set(names)
        assert all(e["status"] == 200 for e in r.json()["results"])


def test_concurrent_classify_requests_share_batches(real_server: ServerProcess) -> None:
    name = httpx.get(real_server.base_url + "/v1/models").json()["models"][0]["name"]
    images = [jpeg(i) for i in range(48)]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=real_server.base_url, timeout=120,
                                     limits=httpx.Limits(max_connections=48)) as c:
            return await asyncio.gather(*(
                c.post(f"/v1/models/{name}/classify", content=img, headers={"content-type": "image/jpeg"})
                for img in images
            ))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * len(images)
    assert max(r.json()["timings"]["batch_size"] for r in responses) > 1
