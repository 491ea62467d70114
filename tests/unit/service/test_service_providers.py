"""Execution providers: the CUDA probe (no ONNX Runtime call, no output), the one-line reason, and
config.pbtxt's Triton TensorRT/CUDA accelerators turned into ONNX Runtime's documented provider options."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

import service.runtimes.onnxruntime.providers as providers
from service.model_config import Accelerator, InstanceGroup, ModelConfig, TensorConfig
from service.runtimes.onnxruntime.providers import (
    CPU,
    CUDA,
    TENSORRT,
    AcceleratorConfigError,
    CudaStatus,
    describe,
    plan_for_model,
    tensorrt_options,
)

TRITON_CONFIG = """
name: "vit_small"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "pixel_values" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] } ]
optimization { execution_accelerators {
  gpu_execution_accelerator : [ {
    name : "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
    parameters { key: "max_workspace_size_bytes" value: "1073741824" }
    parameters { key: "trt_engine_cache_enable" value: "1" }
    parameters { key: "trt_engine_cache_path" value: "/var/cache/trt" }
  } ]
}}
"""


def _plan(text: str, usable: list[str], cache: Path | None = None) -> providers.ProviderPlan:
    cfg = ModelConfig.from_pbtxt(text)
    return plan_for_model(usable, cfg, input_name=cfg.input[0].name, input_dims=cfg.input[0].dims,
                          max_batch_size=cfg.max_batch_size, engine_cache_dir=cache)


def test_triton_tensorrt_config_becomes_the_documented_provider_options() -> None:
    text_format.Parse(TRITON_CONFIG, pb.ModelConfig())  # Triton's ModelConfig parser accepts the config
    plan = _plan(TRITON_CONFIG, [TENSORRT, CUDA, CPU])
    assert plan.providers == [TENSORRT, CUDA, CPU] and plan.note == ""
    assert plan.options[0] == {
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_max_workspace_size": "1073741824",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/var/cache/trt",
        "trt_profile_min_shapes": "pixel_values:1x3x224x224",
        "trt_profile_opt_shapes": "pixel_values:32x3x224x224",
        "trt_profile_max_shapes": "pixel_values:32x3x224x224",
    }
    assert plan.options[1:] == [{}, {}]


def test_protobuf_written_config_gives_the_same_options() -> None:
    written = text_format.MessageToString(text_format.Parse(TRITON_CONFIG, pb.ModelConfig()))
    assert _plan(written, [TENSORRT, CPU]).options == _plan(TRITON_CONFIG, [TENSORRT, CPU]).options


def test_engine_cache_directory_setting_wins_and_is_per_model(tmp_path: Path) -> None:
    options = _plan(TRITON_CONFIG, [TENSORRT, CPU], cache=tmp_path).options[0]
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "vit_small")
    made = providers.engine_cache_path(options)
    assert made == tmp_path / "vit_small" and made.is_dir()
    enabled_without_path = Accelerator(name="tensorrt", parameters={"trt_engine_cache_enable": "true"})
    opts = tensorrt_options(enabled_without_path, input_name="x", input_dims=[3], max_batch_size=2, model_name="m")
    assert opts["trt_engine_cache_path"] == str(providers.DEFAULT_ENGINE_CACHE / "m")


@pytest.mark.parametrize("mode,fp16,int8", [("FP32", "False", "False"), ("fp16", "True", "False"),
                                            ("INT8", "False", "True")])
def test_precision_modes(mode: str, fp16: str, int8: str) -> None:
    opts = tensorrt_options(Accelerator(name="tensorrt", parameters={"precision_mode": mode}), input_name="x",
                            input_dims=[3, 8, 8], max_batch_size=4)
    assert (opts["trt_fp16_enable"], opts["trt_int8_enable"]) == (fp16, int8)
    assert "trt_engine_cache_enable" not in opts  # Triton's default: no cache unless asked


def test_explicit_profiles_and_other_backend_keys_pass_through() -> None:
    params = {"trt_profile_min_shapes": "x:2x3", "trt_profile_opt_shapes": "x:4x3", "trt_profile_max_shapes": "x:4x3",
              "trt_builder_optimization_level": "5", "trt_timing_cache_enable": "false", "trt_min_subgraph_size": "1"}
    opts = tensorrt_options(Accelerator(name="tensorrt", parameters=params), input_name="x", input_dims=[3],
                            max_batch_size=4)
    assert opts == {"trt_profile_min_shapes": "x:2x3", "trt_profile_opt_shapes": "x:4x3",
                    "trt_profile_max_shapes": "x:4x3", "trt_builder_optimization_level": "5",
                    "trt_timing_cache_enable": "False", "trt_min_subgraph_size": "1"}
    # the service's batch limit raised above the exported profile: a profile that covers it replaces it
    raised = tensorrt_options(Accelerator(name="tensorrt", parameters=params), input_name="x", input_dims=[3],
                              max_batch_size=16)
    assert (raised["trt_profile_min_shapes"], raised["trt_profile_max_shapes"]) == ("x:1x3", "x:16x3")


def test_engine_cache_is_keyed_on_the_model_files_digest(tmp_path: Path) -> None:
    """ONNX Runtime names cached engines after file and node names, not weights: a retrained model of the
    same architecture must not be served by the previous weights' engine."""
    acc = Accelerator(name="tensorrt", parameters={"trt_engine_cache_enable": "1", "trt_engine_cache_path": "/c"})
    paths = {tensorrt_options(acc, input_name="x", input_dims=[3], max_batch_size=2, model_digest=digest,
                              engine_cache_dir=cache, model_name="m")["trt_engine_cache_path"]
             for digest in ("a" * 64, "b" * 64) for cache in (None, tmp_path)}
    assert paths == {"/c/" + "a" * 16, "/c/" + "b" * 16, str(tmp_path / "m" / ("a" * 16)),
                     str(tmp_path / "m" / ("b" * 16))}


@pytest.mark.parametrize("params,message", [
    ({"precision_mode": "FP8"}, "precision_mode must be one of"),
    ({"max_workspace_size": "1"}, "unknown tensorrt parameter 'max_workspace_size'"),
    ({"trt_engine_cache_enable": "yes"}, "must be 1/0/true/false"),
    ({"max_workspace_size_bytes": "1GB"}, "must be an integer"),
])
def test_bad_accelerator_parameters_are_refused(params: dict[str, str], message: str) -> None:
    with pytest.raises(AcceleratorConfigError, match=message):
        tensorrt_options(Accelerator(name="tensorrt", parameters=params), input_name="x", input_dims=[3],
                         max_batch_size=2)


def test_a_bad_tensorrt_block_fails_the_load_even_where_tensorrt_cannot_run() -> None:
    bad = TRITON_CONFIG.replace('"precision_mode" value: "FP16"', '"precision_mode" value: "FP64"')
    with pytest.raises(AcceleratorConfigError, match="precision_mode"):
        _plan(bad, [CPU])


def test_tensorrt_only_when_the_config_asks_and_cpu_instances_stay_on_cpu() -> None:
    plain = ModelConfig(name="m", max_batch_size=4, input=[TensorConfig(name="x", dims=[3])],
                        output=[TensorConfig(name="y", dims=[2])])
    plan = plan_for_model([TENSORRT, CUDA, CPU], plain, input_name="x", input_dims=[3], max_batch_size=4)
    assert plan.providers == [CUDA, CPU] and plan.note == "no tensorrt accelerator in config.pbtxt"
    cpu_only = plain.model_copy(update={"instance_group": [InstanceGroup(count=2, kind="KIND_CPU")]})
    plan = plan_for_model([TENSORRT, CUDA, CPU], cpu_only, input_name="x", input_dims=[3], max_batch_size=4)
    assert plan.providers == [CPU] and "KIND_CPU" in plan.note
    cuda_text = TRITON_CONFIG.replace('name : "tensorrt"', 'name : "cuda"').replace(
        '"precision_mode" value: "FP16"', '"cudnn_conv_use_max_workspace" value: "0"')
    plan = _plan(cuda_text, [TENSORRT, CUDA, CPU])
    assert plan.providers == [CUDA, CPU]
    assert plan.options[0]["cudnn_conv_use_max_workspace"] == "0"


class _FakeDriver:
    def __init__(self, init_rc: int, devices: int) -> None:
        self.init_rc, self.devices = init_rc, devices

    def cuInit(self, flags: int) -> int:  # noqa: N802 - the driver API's name
        return self.init_rc

    def cuDeviceGetCount(self, ref) -> int:  # noqa: N802 - the driver API's name
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int)).contents.value = self.devices
        return 0


@pytest.mark.parametrize("driver,libs_ok,usable,reason", [
    (None, True, False, "no NVIDIA driver (libcuda.so.1 not found)"),
    (_FakeDriver(100, 0), True, False, "no CUDA device"),
    (_FakeDriver(0, 0), True, False, "no CUDA device visible"),
    (_FakeDriver(0, 1), False, False, "libcublasLt.so.13"),
    (_FakeDriver(0, 1), True, True, None),
])
def test_cuda_probe(monkeypatch, driver, libs_ok: bool, usable: bool, reason: str | None) -> None:
    def fake_cdll(name: str, *args, **kwargs):
        if name == "libcuda.so.1":
            if driver is None:
                raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
            return driver
        if not libs_ok:
            raise OSError("libcublasLt.so.13: cannot open shared object file: No such file or directory")
        return object()

    monkeypatch.setattr(providers.ctypes, "CDLL", fake_cdll)
    status = providers.cuda_status.__wrapped__((TENSORRT, CUDA, CPU))
    assert status.ok(CUDA) is usable and status.ok(TENSORRT) is usable and status.ok(CPU)
    if reason:
        assert reason in status.reasons[CUDA]
    assert providers.usable_providers([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], status) == (
        [TENSORRT, CUDA, CPU] if usable else [CPU])


def test_reason_is_one_line() -> None:
    status = CudaStatus({TENSORRT: False, CUDA: False}, {TENSORRT: "no NVIDIA driver", CUDA: "no NVIDIA driver"})
    line = describe([TENSORRT, CUDA, CPU], [CPU], status)
    assert line == ("execution provider: CPUExecutionProvider serves; TensorrtExecutionProvider, "
                    "CUDAExecutionProvider skipped: no NVIDIA driver")
    assert describe([CPU], [CPU], status) == "execution provider: CPUExecutionProvider (requested CPUExecutionProvider)"


def test_bound_runner_matches_session_run_on_cpu_buffers() -> None:
    """The I/O-binding path (used on CUDA with pinned buffers) computed with host buffers on the CPU
    provider: same logits as session.run, buffers reused per batch size and per thread without aliasing."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from service.runtimes.onnxruntime.io_binding import BoundRunner, host_allocator

    w = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixel_values"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "g", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 5])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    allocate, kind = host_allocator(CPU)
    assert kind in {"pinned", "pageable"}
    runner = BoundRunner(session, "pixel_values", "logits", 5, allocate)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(b, 3, 2, 2)).astype(np.float32) for b in (1, 3, 3, 1, 4)]
    outs = [runner.run(x) for x in batches]
    for x, out in zip(batches, outs, strict=True):  # earlier results are not overwritten by later batches
        np.testing.assert_allclose(out, session.run(None, {"pixel_values": x})[0], rtol=1e-6)
    results: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        results[i] = runner.run(batches[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(batches)):
        np.testing.assert_allclose(results[i], outs[i], rtol=1e-6)
