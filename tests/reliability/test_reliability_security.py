"""Security properties of the real server: API keys, model-name confinement, request limits, no leaks.

See SECURITY.md for the threat model these tests pin down.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from reliability_support import (
    API_KEY,
    ServerProcess,
    TinyModel,
    assert_clean_error,
    build_tiny_repository,
    start_server,
    v2_body,
)

ROOT = Path(__file__).resolve().parents[2]
INFERENCE_KEY = "inference-key-abcdef"
MAX_BODY = 256 * 1024
MAX_PIXELS = 200 * 200
MAX_IMAGES = 2


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A server with both keys and tight limits; beside its repository lies a valid model it must never reach."""
    base = tmp_path_factory.mktemp("secured")
    root = build_tiny_repository(base / "repo", [TinyModel("tiny_a")])
    build_tiny_repository(base / "outside", [TinyModel("evil")])
    srv = start_server(root, base, "--warmup", "one", "--max-body-bytes", str(MAX_BODY),
                       env={"VITSERVE_INFERENCE_API_KEY": INFERENCE_KEY, "VITSERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
                            "VITSERVE_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES), "VITSERVE_MAX_TOP_K": "5"})
    try:
        yield srv, base
    finally:
        code = srv.stop()
        assert code == 0, srv.log()[-3000:]
        assert "Traceback" not in srv.log(), srv.log()[-3000:]


INFER = {"authorization": f"Bearer {INFERENCE_KEY}"}
ADMIN = {"authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("headers", [
    {},
    {"authorization": "Bearer"},
    {"authorization": "Bearer wrong-key-wrong-key"},
    {"authorization": f"Bearer {API_KEY[:-1]}"},
    {"authorization": f"Bearer {API_KEY}x"},
    {"authorization": f"Bearer {API_KEY.upper()}"},
    {"authorization": f"Basic {API_KEY}"},
    {"x-api-key": "wrong-key-wrong-key"},
    {"authorization": f"Bearer {INFERENCE_KEY}"},  # the inference key is not the admin key
], ids=["none", "empty", "wrong", "prefix", "suffix", "case", "basic", "x-api-key-wrong", "inference-key"])
def test_repository_control_needs_the_api_key(secured: tuple[ServerProcess, Path], headers: dict[str, str]) -> None:
    server, _ = secured
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        for action in ("load", "unload"):
            r = c.post(f"/v2/repository/models/tiny_a/{action}", headers=headers)
            assert_clean_error(r, [401])
            assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
        assert c.get("/v2/models/tiny_a/ready", headers=INFER).status_code == 200, "an unauthorised call changed state"


def test_repository_control_accepts_both_header_forms(secured: tuple[ServerProcess, Path]) -> None:
    server, _ = secured
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        assert c.post("/v2/repository/models/tiny_a/load", headers=ADMIN).status_code == 200
        assert c.post("/v2/repository/models/tiny_a/load", headers={"x-api-key": API_KEY}).status_code == 200


@pytest.mark.parametrize("name", ["..%2Foutside%2Fevil", "..%2F..%2Foutside%2Fevil", "%2e%2e%2foutside%2fevil",
                                  "..%5Coutside%5Cevil", "..", "%2E%2E", "evil", "..%252Foutside%252Fevil",
                                  "outside%2Fevil", "%2Ftmp", "tiny_a%2F..%2F..%2Foutside%2Fevil"])
def test_no_model_name_reaches_outside_the_repository(secured: tuple[ServerProcess, Path], name: str) -> None:
    server, _ = secured
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        r = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN)
        assert r.status_code in (400, 404, 405), (r.status_code, r.text)
        if r.status_code != 405:  # 405: the router saw extra path segments and matched no load route
            assert_clean_error(r, [400, 404])
        index = {e["name"] for e in c.post("/v2/repository/index").json()}
        assert "evil" not in index and not any(".." in n or "/" in n for n in index), index
        r = c.post("/v2/models/evil/infer", headers=INFER, json=v2_body(np.zeros((1, 3, 32, 32), np.float32)))
        assert_clean_error(r, [404])


def test_inference_needs_the_inference_key_when_configured(secured: tuple[ServerProcess, Path]) -> None:
    server, _ = secured
    x = np.zeros((1, 3, 32, 32), np.float32)
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        for headers in ({}, {"authorization": "Bearer nope-nope-nope"}, {"x-api-key": API_KEY[:8]}):
            assert_clean_error(c.post("/v2/models/tiny_a/infer", json=v2_body(x), headers=headers), [401])
            assert_clean_error(c.post("/v1/models/tiny_a/classify", content=png((40, 40)),
                                      headers={**headers, "content-type": "image/png"}), [401])
            assert_clean_error(c.post("/v1/compare", content=png((40, 40)),
                                      headers={**headers, "content-type": "image/png"}), [401])
        assert c.post("/v2/models/tiny_a/infer", json=v2_body(x), headers=INFER).status_code == 200
        assert c.post("/v1/models/tiny_a/classify", content=png((40, 40)),
                      headers={"x-api-key": INFERENCE_KEY, "content-type": "image/png"}).status_code == 200
        # probes and scraping work without a key (kubelet and Prometheus hold none)
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert c.get(path).status_code == 200


def test_request_limits(secured: tuple[ServerProcess, Path]) -> None:
    server, _ = secured
    with httpx.Client(base_url=server.base_url, timeout=30, headers=INFER) as c:
        ok = png((100, 100))
        assert c.post("/v1/models/tiny_a/classify?top_k=5", content=ok,
                      headers={"content-type": "image/png"}).status_code == 200
        assert_clean_error(c.post("/v1/models/tiny_a/classify?top_k=6", content=ok,
                                  headers={"content-type": "image/png"}), [400])
        assert_clean_error(c.post("/v1/models/tiny_a/classify?top_k=100000000000000000000", content=ok,
                                  headers={"content-type": "image/png"}), [400])
        assert_clean_error(c.post("/v1/models/tiny_a/classify", content=png((201, 200)),
                                  headers={"content-type": "image/png"}), [413])
        noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "BMP")  # ~270 KB > MAX_BODY
        assert_clean_error(c.post("/v1/models/tiny_a/classify", content=buf.getvalue(),
                                  headers={"content-type": "image/bmp"}), [413])
        two = np.zeros((MAX_IMAGES, 3, 32, 32), np.float32)
        three = np.zeros((MAX_IMAGES + 1, 3, 32, 32), np.float32)
        assert c.post("/v2/models/tiny_a/infer", json=v2_body(two)).status_code == 200
        assert_clean_error(c.post("/v2/models/tiny_a/infer", json=v2_body(three)), [400])


def test_error_pages_leak_no_trace_path_or_server_banner(secured: tuple[ServerProcess, Path]) -> None:
    server, base = secured
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        responses = [
            c.get("/no/such/route"),
            c.delete("/v2/models/tiny_a"),
            c.post("/v2/repository/index", content=b"{not json", headers={"content-type": "application/json"}),
            c.post("/v2/repository/models/nope/load", headers=ADMIN),
            c.get("/v2/models/tiny_a/versions/abc"),
            c.post("/v1/models/tiny_a/classify", headers={**INFER, "content-type": "image/png"},
                   content=b"\x89PNG\r\n\x1a\n"),
        ]
    for r in responses:
        assert r.status_code < 500, (r.request.url, r.status_code, r.text)
        assert_clean_error(r, [r.status_code])
        assert str(base) not in r.text and "/work/" not in r.text, r.text
        assert "uvicorn" not in r.headers.get("server", "").lower()


def test_container_runs_as_non_root() -> None:
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.fail("Dockerfile is missing")
    stages = re.split(r"(?im)^FROM\s", dockerfile.read_text())
    final = stages[-1]
    users = re.findall(r"(?im)^USER\s+(\S+)", final)
    assert users, "the final stage sets no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the final stage runs as {user}"
