"""Hot reload under load: a new version is loaded and warmed in the background and swapped in atomically.

Traffic runs throughout; no request fails, each response's numbers are exactly those of the version it
names (no request is half on one version), and the served version switches from old to new. Unload
lets accepted requests finish before it answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
from reliability_load import Outcome, Request, closed_loop, make_session, open_loop, send, summary
from reliability_support import (
    API_KEY,
    FIGURES,
    SLOW,
    TinyModel,
    add_version,
    build_tiny_repository,
    expected_logits,
    slow_conv_onnx,
    start_server,
    wait_until,
    write_custom_model,
)

TINY_A = TinyModel("tiny_a")
AUTH = {"authorization": f"Bearer {API_KEY}"}


def infer_requests(base: str, n: int = 8) -> tuple[list[np.ndarray], list[Request]]:
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(n)]
    reqs = [Request("POST", f"{base}/v2/models/tiny_a/infer",
                    json.dumps({"id": str(i), "inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32],
                                                          "datatype": "FP32", "data": x.ravel().tolist()}]}).encode(),
                    {"content-type": "application/json"}) for i, x in enumerate(xs)]
    return xs, reqs


def check_versions(outcomes: list[Outcome], xs: list[np.ndarray]) -> list[int]:
    """Every answer is 200 and carries exactly its version's logits; returns the versions in start order."""
    assert outcomes and all(o.status == 200 for o in outcomes), summary(outcomes)
    versions = []
    for o in sorted(outcomes, key=lambda o: o.start):
        body = json.loads(o.body)
        version = int(body["model_version"])
        x = xs[int(body["id"])]
        got = np.asarray(body["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, expected_logits(TINY_A, version, x)[0], rtol=1e-4, atol=1e-4)
        versions.append(version)
    return versions


def run_traffic_during(base: str, action, seconds: float = 4.0) -> tuple[list[Outcome], list[np.ndarray], object]:
    xs, reqs = infer_requests(base)

    async def main() -> tuple[list[Outcome], object]:
        async with make_session() as s:
            load = asyncio.create_task(closed_loop(s, lambda i: reqs[i % len(reqs)], 4, seconds, keep_body=True))
            await asyncio.sleep(0.8)
            result = await asyncio.to_thread(action)
            return await load, result

    outcomes, result = asyncio.run(main())
    return outcomes, xs, result


def test_new_version_directory_is_picked_up_and_swapped_without_a_failed_request(tmp_path: Path) -> None:
    root = build_tiny_repository(tmp_path / "repo", [TINY_A])
    server = start_server(root, tmp_path, "--warmup", "all", "--poll-interval-s", "0.3")
    try:
        def new_version() -> float:
            add_version(root, TINY_A, 2)
            t = time.monotonic()
            assert wait_until(lambda: httpx.get(server.base_url + "/v1/models/tiny_a").json()["version"] == 2, 20)
            return time.monotonic() - t

        outcomes, xs, swap_s = run_traffic_during(server.base_url, new_version)
        versions = check_versions(outcomes, xs)
        assert versions[0] == 1 and versions[-1] == 2, summary(outcomes)
        first_new = versions.index(2)
        # after the first request served by v2 started, at most the ones already in flight may still say v1
        assert versions[first_new:].count(1) <= 8, versions[first_new:first_new + 20]
        info = httpx.get(server.base_url + "/v1/models/tiny_a").json()
        assert info["versions"] == [2] and info["state"] == "ready"
        FIGURES["hot_reload_poll"] = {"requests": len(outcomes), "v1": versions.count(1), "v2": versions.count(2),
                                      "swap_seen_after_s": round(swap_s, 2)}
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_load_call_swaps_and_unload_drains_first(tmp_path: Path) -> None:
    root = build_tiny_repository(tmp_path / "repo", [TINY_A])
    write_custom_model(root, SLOW, slow_conv_onnx)
    server = start_server(root, tmp_path, "--warmup", "one", "--intra-op-threads", "1")
    base = server.base_url
    try:
        def load_v2() -> int:
            add_version(root, TINY_A, 2)
            r = httpx.post(base + "/v2/repository/models/tiny_a/load", headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["version"]

        outcomes, xs, loaded = run_traffic_during(base, load_v2, seconds=3.0)
        assert loaded == 2
        versions = check_versions(outcomes, xs)
        assert versions[0] == 1 and versions[-1] == 2

        # unload the slow model while a full queue of requests waits: every one of them completes first
        image_req = Request("POST", f"{base}/v1/models/tiny_slow/classify",
                            Path(__file__).with_name("corpus").joinpath("png_rgba.png").read_bytes(),
                            {"content-type": "image/png"})

        async def unload_under_load() -> tuple[list[Outcome], Outcome]:
            async with make_session() as s:
                queued = asyncio.create_task(open_loop(s, lambda i: image_req, 200, 0.04))  # 8 requests = the queue
                await asyncio.sleep(0.1)
                unload = await send(s, Request("POST", f"{base}/v2/repository/models/tiny_slow/unload", b"", AUTH),
                                    keep_body=True)
                return await queued, unload

        queued, unload = asyncio.run(unload_under_load())
        assert unload.status == 200 and json.loads(unload.body)["state"] == "unloaded", unload.body
        accepted = [o for o in queued if o.status == 200]
        assert accepted, summary(queued)
        assert all(o.status == 200 or (o.status == 503 and b"queue is full" in o.body) for o in queued), \
            [(o.status, o.body[:100]) for o in queued]
        assert max(o.end for o in accepted) <= unload.end, "unload answered before its accepted requests finished"
        r = httpx.post(f"{base}/v1/models/tiny_slow/classify", content=image_req.data,
                       headers={"content-type": "image/png"})
        assert r.status_code == 503 and "unload" in r.json()["error"]
        assert httpx.get(f"{base}/v2/models/tiny_slow/ready").status_code == 503
        assert httpx.post(f"{base}/v2/repository/models/tiny_slow/load", headers=AUTH, timeout=60).status_code == 200
        assert httpx.post(f"{base}/v1/models/tiny_slow/classify", content=image_req.data,
                          headers={"content-type": "image/png"}, timeout=30).status_code == 200
        FIGURES["hot_reload_load_call"] = {"requests": len(outcomes), "v1": versions.count(1), "v2": versions.count(2),
                                           "unload_with_queue": summary(queued)}
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_load_unload_storm_answers_only_200_or_503(tmp_path: Path) -> None:
    """Load and unload in a tight loop while traffic runs: no race ever shows as a 500 or a lost request."""
    root = build_tiny_repository(tmp_path / "repo", [TINY_A])
    server = start_server(root, tmp_path, "--warmup", "one")
    base = server.base_url
    try:
        def operator(seed: int) -> list[int]:
            statuses = []
            with httpx.Client(base_url=base, headers=AUTH, timeout=60) as c:
                for i in range(8):
                    action = "unload" if (i + seed) % 3 == 0 else "load"
                    statuses.append(c.post(f"/v2/repository/models/tiny_a/{action}").status_code)
            return statuses

        def storm() -> int:
            """Three operators load and unload at once (the registry must serialise them)."""
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(3) as pool:
                results = [s for r in pool.map(operator, range(3)) for s in r]
            assert set(results) <= {200}, results
            assert httpx.post(base + "/v2/repository/models/tiny_a/load", headers=AUTH, timeout=60).status_code == 200
            return len(results)

        outcomes, xs, actions = run_traffic_during(base, storm, seconds=4.0)
        bad = [o for o in outcomes if o.status not in (200, 503)]
        assert not bad, [(o.status, o.error, o.body[:200]) for o in bad[:5]]
        assert any(o.status == 200 for o in outcomes)
        for o in outcomes:
            if o.status == 503:
                assert json.loads(o.body)["error"] and o.retry_after, o.body  # not ready: loading / unloading
        check_versions([o for o in outcomes if o.status == 200], xs)
        assert httpx.get(base + "/v2/models/tiny_a/ready").status_code == 200
        FIGURES["load_unload_storm"] = {"actions": actions, "answers": summary(outcomes)}
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_a_half_written_version_is_retried_until_complete(tmp_path: Path) -> None:
    """Poll mode sees a version directory before its file is complete: v1 keeps serving, v2 follows later."""
    root = build_tiny_repository(tmp_path / "repo", [TINY_A])
    server = start_server(root, tmp_path, "--warmup", "one", "--poll-interval-s", "0.2")
    base = server.base_url
    try:
        vdir = root / "tiny_a" / "2"
        vdir.mkdir()
        (vdir / "model.onnx").write_bytes(b"\x08\x09partial")
        assert wait_until(lambda: "reload failed" in (httpx.get(base + "/v1/models/tiny_a").json()["reason"] or ""), 10)
        info = httpx.get(base + "/v1/models/tiny_a").json()
        assert info["state"] == "ready" and info["version"] == 1
        x = np.zeros((1, 3, 32, 32), np.float32)
        body = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        assert httpx.post(base + "/v2/models/tiny_a/infer", json=body).json()["model_version"] == "1"
        (vdir / "model.onnx").unlink()
        vdir.rmdir()
        add_version(root, TINY_A, 2)  # the writer finishes: file, then manifest with its sha256
        assert wait_until(lambda: httpx.get(base + "/v1/models/tiny_a").json()["version"] == 2, 10)
        assert httpx.post(base + "/v2/models/tiny_a/infer", json=body).json()["model_version"] == "2"
    finally:
        assert server.stop() == 0, server.log()[-3000:]
