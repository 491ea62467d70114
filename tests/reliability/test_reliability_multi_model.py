"""Many models in one server (issue 13): they load side by side, each answers as soon as it is ready while
others still load, hot reload still swaps, and every CPU session gets every core under the compute gate.

Real `vitserve serve` processes on loopback ports; never timings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import numpy as np
from reliability_support import (
    API_KEY,
    TinyModel,
    add_version,
    build_tiny_repository,
    expected_logits,
    slow_conv_onnx,
    start_server,
    stopped_cleanly,
    v2_body,
    wait_until,
    write_custom_model,
)
from tiny_repository import triton_config  # noqa: E402  (on the path through reliability_support)

from service.runtimes import InferenceRuntime, register_runtime  # noqa: E402  (after the imports that set up sys.path)

AUTH = {"Authorization": f"Bearer {API_KEY}"}

GATED_BACKEND = "gated_echo"
GATE_ENV = "VITSERVE_TEST_LOAD_GATE"


class GatedRuntime(InferenceRuntime):
    """Echo logits; its warm-up waits for the file named by VITSERVE_TEST_LOAD_GATE: a load as long as the test
    wants, with no timing assumption."""

    provider = "GatedEchoProvider"

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        gate = Path(os.environ[GATE_ENV])
        deadline = time.monotonic() + 300
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        super().warmup(batch_sizes)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        classes = self.spec.manifest.num_classes
        return np.ascontiguousarray(pixel_values.reshape(len(pixel_values), -1)[:, :classes], dtype=np.float32)


register_runtime(GATED_BACKEND, GatedRuntime)
# sorts first, so a server that loads one model after another would keep every other model waiting for it
SLOW_LOADING = TinyModel("a_slow_loading", size=64, max_batch_size=32, max_queue_size=64)
FAST = [TinyModel("tiny_a"), TinyModel("tiny_b", num_classes=5), TinyModel("tiny_c", num_classes=7),
        TinyModel("tiny_d", num_classes=3)]


def infer(base: str, model: TinyModel, x: np.ndarray) -> tuple[int, np.ndarray]:
    r = httpx.post(f"{base}/v2/models/{model.name}/infer", json=v2_body(x), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    return int(out["model_version"]), np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(len(x), -1)


def models_report(base: str) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in httpx.get(f"{base}/v1/models", timeout=10).json()["models"]}


def test_a_ready_model_answers_while_another_still_loads(tmp_path: Path) -> None:
    # the slow model's runtime (this file, imported by the server as a plugin) holds its warm-up until the
    # test creates the release file: the model is still loading at every check below, on any machine
    root = build_tiny_repository(tmp_path / "repo", [FAST[0]])
    directory = write_custom_model(root, SLOW_LOADING, lambda m, v: slow_conv_onnx(m, v, layers=1, channels=4))
    triton_config(SLOW_LOADING).model_copy(update={"backend": GATED_BACKEND}).save(directory / "config.pbtxt")
    release = tmp_path / "release"
    here = str(Path(__file__).resolve().parent)
    env = {"VITSERVE_RUNTIME_MODULES": Path(__file__).stem, GATE_ENV: str(release),
           "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
    srv = start_server(root, tmp_path, "--warmup", "one", "--load-concurrency", "2", env=env,
                       ready_path=f"/v2/models/{FAST[0].name}/ready", ready_timeout=120)
    with stopped_cleanly(srv):
        base = srv.base_url
        # the server as a whole is not ready (its initial load is not done: documented), the fast model is
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        assert models_report(base)[SLOW_LOADING.name]["state"] == "loading"
        assert httpx.get(f"{base}/v2/models/{SLOW_LOADING.name}/ready").status_code == 503
        x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
        version, logits = infer(base, FAST[0], x)
        assert version == 1
        np.testing.assert_allclose(logits, expected_logits(FAST[0], 1, x), rtol=1e-4, atol=1e-4)
        r = httpx.post(f"{base}/v2/models/{SLOW_LOADING.name}/infer", json=v2_body(x), timeout=10)
        assert r.status_code == 503 and "loading" in r.json()["error"]
        # then the slow one finishes, the server turns ready and both serve
        release.touch()
        assert wait_until(lambda: httpx.get(f"{base}/v2/health/ready").status_code == 200, 120, 0.2), \
            srv.log()[-3000:]
        assert models_report(base)[SLOW_LOADING.name]["state"] == "ready"
        slow_x = np.zeros((1, 3, 64, 64), dtype=np.float32)
        assert httpx.post(f"{base}/v2/models/{SLOW_LOADING.name}/infer", json=v2_body(slow_x),
                          timeout=60).status_code == 200


def test_models_loaded_side_by_side_all_serve_and_hot_reload_still_swaps(tmp_path: Path) -> None:
    broken = TinyModel("tiny_corrupt", breakage="corrupt_onnx")
    root = build_tiny_repository(tmp_path / "repo", [*FAST, broken])
    srv = start_server(root, tmp_path, "--warmup", "pow2", "--load-concurrency", "4", "--log-level", "info")
    with stopped_cleanly(srv):
        base = srv.base_url
        index = {m["name"]: m for m in httpx.post(f"{base}/v2/repository/index", timeout=10).json()}
        assert {n: index[n]["state"] for n in index} == {**{m.name: "READY" for m in FAST}, broken.name: "UNAVAILABLE"}
        assert "cannot create session" in index[broken.name]["reason"]
        rng = np.random.default_rng(2)
        for model in FAST:  # each answers with its own weights (no session mixed up between parallel loads)
            x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
            version, logits = infer(base, model, x)
            assert version == 1
            np.testing.assert_allclose(logits, expected_logits(model, 1, x), rtol=1e-4, atol=1e-4)
        # every CPU session got every core: the compute gate, not a per-session share, divides them
        cores = len(os.sched_getaffinity(0))  # the cores the server may run on
        for model in FAST:
            assert f"{model.name} v1: session on CPUExecutionProvider (intra-op threads {cores}," in srv.log()
        add_version(root, FAST[1], 2)
        r = httpx.post(f"{base}/v2/repository/models/{FAST[1].name}/load", headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        x = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
        version, logits = infer(base, FAST[1], x)
        assert version == 2
        np.testing.assert_allclose(logits, expected_logits(FAST[1], 2, x), rtol=1e-4, atol=1e-4)


def test_intra_op_threads_set_by_hand_reach_every_session(tmp_path: Path) -> None:
    threads = 1
    root = build_tiny_repository(tmp_path / "repo", FAST[:2])
    srv = start_server(root, tmp_path, "--warmup", "one", "--intra-op-threads", str(threads), "--compute-threads",
                       "1", "--log-level", "info")
    with stopped_cleanly(srv):
        x = np.ones((1, 3, 32, 32), dtype=np.float32)
        for model in FAST[:2]:
            assert infer(srv.base_url, model, x)[0] == 1
            assert f"{model.name} v1: session on CPUExecutionProvider (intra-op threads {threads}," in srv.log()
