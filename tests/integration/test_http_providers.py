"""A real `vitserve serve` asking for the default TensorRT -> CUDA -> CPU providers: on a machine without a
usable CUDA it prints no ONNX Runtime error, says once, in one line, which provider serves and why, shows
the provider in /v1/models, exports no GPU series (absent, not zero), and serves a model whose
config.pbtxt configures TensorRT the Triton way."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from service_server import ServerProcess, start_server
from tiny_repository import TinyModel, build_tiny_repository, triton_config

from service.model_config import Accelerator, ExecutionAccelerators, ModelOptimization

TRT = ModelOptimization(execution_accelerators=ExecutionAccelerators(gpu_execution_accelerator=[
    Accelerator(name="tensorrt", parameters={"precision_mode": "FP16", "trt_engine_cache_enable": "1"})]))


def _cuda_usable() -> bool:
    import onnxruntime as ort

    from service.runtimes.onnxruntime.providers import CUDA, cuda_status

    return cuda_status(tuple(ort.get_available_providers())).ok(CUDA)


@pytest.fixture(scope="module")
def cpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if _cuda_usable():
        pytest.skip("this machine has a usable CUDA: the CPU-only start is not what runs here")
    names = ["tiny_a", "tiny_trt", "tiny_badtrt"]
    repo = build_tiny_repository(tmp_path_factory.mktemp("providers_repo"), [TinyModel(n) for n in names])
    triton_config(TinyModel("tiny_trt")).model_copy(update={"optimization": TRT}).save(
        repo / "tiny_trt" / "config.pbtxt")
    bad = TRT.model_copy(deep=True)
    bad.execution_accelerators.gpu_execution_accelerator[0].parameters["max_workspace_size"] = "1"  # not a key
    triton_config(TinyModel("tiny_badtrt")).model_copy(update={"optimization": bad}).save(
        repo / "tiny_badtrt" / "config.pbtxt")
    cache = tmp_path_factory.mktemp("engines")
    srv = start_server(repo, tmp_path_factory.mktemp("providers_server"), "--warmup", "one",
                       env={"VITSERVE_TRT_ENGINE_CACHE_DIR": str(cache)})
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


def test_cpu_start_prints_no_onnxruntime_error_and_one_provider_line(cpu_server: ServerProcess) -> None:
    log = cpu_server.log()
    assert "[E:onnxruntime" not in log and "EP Error" not in log and "[W:onnxruntime" not in log, log[-3000:]
    assert "\x1b[" not in log  # none of ONNX Runtime's coloured lines
    lines = [line for line in log.splitlines() if "execution provider:" in line]
    assert len(lines) == 1, log[-3000:]
    assert "CPUExecutionProvider serves" in lines[0]
    assert "TensorrtExecutionProvider, CUDAExecutionProvider skipped" in lines[0]


def test_models_show_the_provider_and_why(cpu_server: ServerProcess) -> None:
    body = httpx.get(cpu_server.base_url + "/v1/models", timeout=10).json()
    models = {m["name"]: m for m in body["models"]}
    for name in ("tiny_a", "tiny_trt"):
        assert models[name]["state"] == "ready"
        assert models[name]["provider"] == "CPUExecutionProvider"
        note = models[name]["provider_note"]  # e.g. "no NVIDIA driver (libcuda.so.1 not found)"
        assert note and note in [line for line in cpu_server.log().splitlines() if "execution provider:" in line][0]
    assert models["tiny_badtrt"]["state"] == "failed"
    assert "unknown tensorrt parameter 'max_workspace_size'" in models["tiny_badtrt"]["reason"]
    config = httpx.get(cpu_server.base_url + "/v2/models/tiny_trt/config", timeout=10).json()
    params = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]["parameters"]
    assert params == {"precision_mode": "FP16", "trt_engine_cache_enable": "1"}


def test_no_gpu_series_without_a_gpu(cpu_server: ServerProcess) -> None:
    text = httpx.get(cpu_server.base_url + "/metrics", timeout=10).text
    assert "vitserve_model_ready" in text
    assert "nv_gpu_" not in text  # absent, not zero
