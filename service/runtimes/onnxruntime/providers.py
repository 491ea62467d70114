"""Which ONNX Runtime execution providers a session asks for, and with which options.

Two jobs, both decided before ONNX Runtime is asked for anything:

* **Is CUDA usable here?** `onnxruntime-gpu` lists the CUDA and TensorRT providers on every machine;
  asking for them where the driver or the CUDA libraries are missing makes ONNX Runtime print a red,
  multi-line error per session before it falls back. So the NVIDIA driver is probed (`cuInit`, device
  count) and ONNX Runtime's provider libraries are loaded once with `ctypes` (which fails, quietly,
  exactly when ONNX Runtime's own load would); unusable providers are never requested, and why is
  said once, in one line (`describe`).
* **Provider options the Triton way.** A model's `config.pbtxt` configures TensorRT as Triton's
  onnxruntime backend reads it: `optimization { execution_accelerators { gpu_execution_accelerator
  [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } ... } ] } }`. The keys map
  to ONNX Runtime's documented TensorRT provider options by the backend's own table (`TRT_PARAMETERS`);
  a `cuda` accelerator's parameters are CUDA provider options. As in Triton, TensorRT serves a model
  only when its config asks for it (else CUDA does), and `instance_group { kind: KIND_CPU }` keeps a
  model on the CPU. Optimisation profiles cover batch 1..max_batch_size unless the config gives its
  own, and engines are cached in a writable directory when the config or the settings enable it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.model_config import Accelerator, ModelConfig

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: providers that need the NVIDIA driver and ONNX Runtime's CUDA provider library
NVIDIA_PROVIDERS = (TENSORRT, CUDA)
_PROVIDER_LIBRARY = {CUDA: "libonnxruntime_providers_cuda.so", TENSORRT: "libonnxruntime_providers_tensorrt.so"}

# Triton onnxruntime backend key -> (ONNX Runtime TensorRT provider option, type); `precision_mode`
# is handled on its own (FP16 -> trt_fp16_enable, INT8 -> trt_int8_enable).
TRT_PARAMETERS: dict[str, tuple[str, type]] = {
    "max_workspace_size_bytes": ("trt_max_workspace_size", int),
    "trt_max_partition_iterations": ("trt_max_partition_iterations", int),
    "trt_min_subgraph_size": ("trt_min_subgraph_size", int),
    "int8_calibration_table_name": ("trt_int8_calibration_table_name", str),
    "int8_use_native_calibration_table": ("trt_int8_use_native_calibration_table", bool),
    "trt_dla_enable": ("trt_dla_enable", bool),
    "trt_dla_core": ("trt_dla_core", int),
    "trt_engine_cache_enable": ("trt_engine_cache_enable", bool),
    "trt_engine_cache_path": ("trt_engine_cache_path", str),
    "trt_engine_cache_prefix": ("trt_engine_cache_prefix", str),
    "trt_dump_subgraphs": ("trt_dump_subgraphs", bool),
    "trt_force_sequential_engine_build": ("trt_force_sequential_engine_build", bool),
    "trt_context_memory_sharing_enable": ("trt_context_memory_sharing_enable", bool),
    "trt_layer_norm_fp32_fallback": ("trt_layer_norm_fp32_fallback", bool),
    "trt_timing_cache_enable": ("trt_timing_cache_enable", bool),
    "trt_timing_cache_path": ("trt_timing_cache_path", str),
    "trt_force_timing_cache": ("trt_force_timing_cache", bool),
    "trt_detailed_build_log": ("trt_detailed_build_log", bool),
    "trt_build_heuristics_enable": ("trt_build_heuristics_enable", bool),
    "trt_sparsity_enable": ("trt_sparsity_enable", bool),
    "trt_builder_optimization_level": ("trt_builder_optimization_level", int),
    "trt_auxiliary_streams": ("trt_auxiliary_streams", int),
    "trt_tactic_sources": ("trt_tactic_sources", str),
    "trt_extra_plugin_lib_paths": ("trt_extra_plugin_lib_paths", str),
    "trt_profile_min_shapes": ("trt_profile_min_shapes", str),
    "trt_profile_max_shapes": ("trt_profile_max_shapes", str),
    "trt_profile_opt_shapes": ("trt_profile_opt_shapes", str),
    "trt_cuda_graph_enable": ("trt_cuda_graph_enable", bool),
    "trt_dump_ep_context_model": ("trt_dump_ep_context_model", bool),
    "trt_ep_context_file_path": ("trt_ep_context_file_path", str),
    "trt_ep_context_embed_mode": ("trt_ep_context_embed_mode", int),
}
PRECISION_MODES = ("FP32", "FP16", "INT8")
#: where engines go when the cache is enabled without a path and no cache directory is set
DEFAULT_ENGINE_CACHE = Path(tempfile.gettempdir()) / "vitserve-trt-engines"


class AcceleratorConfigError(ValueError):
    """config.pbtxt's execution accelerator settings cannot become provider options."""


@dataclass(frozen=True)
class CudaStatus:
    """Whether the NVIDIA providers can work in this process, per provider, and why not."""

    usable: dict[str, bool]
    reasons: dict[str, str]

    def ok(self, provider: str) -> bool:
        return self.usable.get(provider, provider not in NVIDIA_PROVIDERS)


def _driver_problem() -> str | None:
    """None when the NVIDIA driver initialises and sees a device, else why not (no output either way)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    rc = cuda.cuInit(0)
    if rc != 0:
        return f"the NVIDIA driver did not initialise (cuInit error {rc}{', no CUDA device' if rc == 100 else ''})"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "no CUDA device visible"
    return None


def _library_problem(provider: str) -> str | None:
    """None when ONNX Runtime's library for `provider` and its CUDA/cuDNN/TensorRT dependencies load."""
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "capi" / _PROVIDER_LIBRARY[provider]
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return f"{provider} cannot load ({str(exc).split(':', 1)[-1].strip() if path.name in str(exc) else exc})"
    return None


@functools.cache
def cuda_status(available: tuple[str, ...]) -> CudaStatus:
    """Probe once per process which of the NVIDIA providers this onnxruntime build offers can run."""
    usable: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    wanted = [p for p in NVIDIA_PROVIDERS if p in available]
    for p in NVIDIA_PROVIDERS:
        if p not in available:
            usable[p], reasons[p] = False, f"this onnxruntime build has no {p}"
    if wanted:
        driver = _driver_problem()
        for p in wanted:
            problem = driver or _library_problem(p)
            usable[p] = problem is None
            if problem:
                reasons[p] = problem
    return CudaStatus(usable, reasons)


def usable_providers(requested: Sequence[str], available: Sequence[str], status: CudaStatus) -> list[str]:
    """Requested providers this build offers and this machine can run, in order; CPU always last resort."""
    chosen = [p for p in requested if p in available and status.ok(p)]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def describe(requested: Sequence[str], chosen: Sequence[str], status: CudaStatus) -> str:
    """One line: which provider serves and why the ones ahead of it in the request do not."""
    first = chosen[0]
    skipped = [p for p in requested if p not in chosen]
    if not skipped:
        return f"execution provider: {first} (requested {', '.join(requested)})"
    why = sorted({status.reasons.get(p, f"{p} not available") for p in skipped})
    return f"execution provider: {first} serves; {', '.join(skipped)} skipped: {'; '.join(why)}"


# --- per-model providers and options --------------------------------------------------------------


def _as_bool(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in {"1", "true"}:
        return True
    if low in {"0", "false"}:
        return False
    raise AcceleratorConfigError(f"tensorrt parameter {key!r} must be 1/0/true/false, got {value!r}")


def _as_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise AcceleratorConfigError(f"tensorrt parameter {key!r} must be an integer, got {value!r}") from None


def profile_shapes(input_name: str, input_dims: Sequence[int], max_batch_size: int) -> dict[str, str]:
    """TensorRT optimisation profile covering batch 1..max_batch_size (optimised for the largest batch,
    which is what the dynamic batcher forms under load)."""
    dims = "x".join(str(d) for d in input_dims)
    return {
        "trt_profile_min_shapes": f"{input_name}:1x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{max_batch_size}x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch_size}x{dims}",
    }


def tensorrt_options(
    accelerator: Accelerator,
    *,
    input_name: str,
    input_dims: Sequence[int],
    max_batch_size: int,
    engine_cache_dir: Path | None = None,
    model_name: str = "",
    model_digest: str = "",
) -> dict[str, str]:
    """A Triton `tensorrt` accelerator -> ONNX Runtime TensorRT provider options (string values).

    `engine_cache_dir` (the service's setting) turns the engine cache on, in `<dir>/<model>`,
    overriding the config's path: the directory a deployment mounts writable. A cache enabled by the
    config without a path goes to DEFAULT_ENGINE_CACHE (ONNX Runtime's default, the working
    directory, is read-only in the container).

    The cache directory ends in the model file's digest (`model_digest`, from vitserve.json): ONNX
    Runtime names a cached engine after the graph's file and node names, not its weights, so a
    retrained model with the same architecture would otherwise be served by the old weights' engine.
    A profile from the config that does not reach `max_batch_size` (the service's batch limit can
    be raised above the exported one) is replaced by one that does: TensorRT refuses shapes outside it.
    """
    out: dict[str, str] = {}
    for key, value in accelerator.parameters.items():
        if key == "precision_mode":
            mode = value.strip().upper()
            if mode not in PRECISION_MODES:
                raise AcceleratorConfigError(f"tensorrt precision_mode must be one of {PRECISION_MODES}, got {value!r}")
            out["trt_fp16_enable"] = str(mode == "FP16")
            out["trt_int8_enable"] = str(mode == "INT8")
            continue
        if key not in TRT_PARAMETERS:
            raise AcceleratorConfigError(f"unknown tensorrt parameter {key!r} (Triton's onnxruntime backend keys: "
                                         f"precision_mode, {', '.join(sorted(TRT_PARAMETERS))})")
        option, kind = TRT_PARAMETERS[key]
        if kind is bool:
            out[option] = str(_as_bool(key, value))
        elif kind is int:
            out[option] = str(_as_int(key, value))
        else:
            out[option] = value
    if not any(k.startswith("trt_profile_") for k in out) or _profile_max_batch(out) < max_batch_size:
        out.update(profile_shapes(input_name, input_dims, max_batch_size))
    if engine_cache_dir is not None:
        out["trt_engine_cache_enable"] = "True"
        out["trt_engine_cache_path"] = str(Path(engine_cache_dir) / model_name if model_name else engine_cache_dir)
    elif out.get("trt_engine_cache_enable") == "True" and not out.get("trt_engine_cache_path"):
        out["trt_engine_cache_path"] = str(DEFAULT_ENGINE_CACHE / model_name if model_name else DEFAULT_ENGINE_CACHE)
    if out.get("trt_engine_cache_enable") == "True" and model_digest:
        out["trt_engine_cache_path"] = str(Path(out["trt_engine_cache_path"]) / model_digest[:16])
    return out


def _profile_max_batch(options: dict[str, str]) -> int:
    """The smallest batch dimension in `trt_profile_max_shapes` ("name:8x3x224x224,other:8x..."); 0 if absent."""
    shapes = [part.rsplit(":", 1)[-1] for part in options.get("trt_profile_max_shapes", "").split(",") if part]
    try:
        return min(int(shape.split("x", 1)[0]) for shape in shapes) if shapes else 0
    except ValueError:
        shapes_text = options["trt_profile_max_shapes"]
        raise AcceleratorConfigError(f"cannot read trt_profile_max_shapes {shapes_text!r}") from None


@dataclass(frozen=True)
class ProviderPlan:
    """The providers one session asks for, their options (aligned), and why this order."""

    providers: list[str]
    options: list[dict[str, str]]
    note: str


def plan_for_model(
    usable: Sequence[str],
    config: ModelConfig | None,
    *,
    input_name: str,
    input_dims: Sequence[int],
    max_batch_size: int,
    engine_cache_dir: Path | None = None,
    model_digest: str = "",
) -> ProviderPlan:
    """The session's providers and options: the usable providers, narrowed by the model's config.pbtxt."""
    providers = list(usable)
    notes: list[str] = []
    optimization = config.optimization if config is not None else None
    trt = optimization.gpu_accelerator("tensorrt") if optimization is not None else None
    cuda = optimization.gpu_accelerator("cuda") if optimization is not None else None
    if config is not None and config.instance_group and all(g.kind == "KIND_CPU" for g in config.instance_group):
        providers = [p for p in providers if p not in NVIDIA_PROVIDERS]
        notes.append("instance_group KIND_CPU")
    if TENSORRT in providers and trt is None:
        providers.remove(TENSORRT)
        notes.append("no tensorrt accelerator in config.pbtxt")
    if CPU not in providers:
        providers.append(CPU)
    # validated even where TensorRT will not run: a config Triton would refuse fails here too
    trt_options = tensorrt_options(trt, input_name=input_name, input_dims=input_dims, max_batch_size=max_batch_size,
                                   engine_cache_dir=engine_cache_dir, model_digest=model_digest,
                                   model_name=config.name if config is not None else "") if trt is not None else {}
    options: list[dict[str, str]] = []
    for p in providers:
        if p == TENSORRT:
            options.append(trt_options)
        elif p == CUDA and cuda is not None:
            options.append(dict(cuda.parameters))
        else:
            options.append({})
    return ProviderPlan(providers, options, "; ".join(notes))


def engine_cache_path(options: dict[str, str]) -> Path | None:
    """The engine cache directory a TensorRT session will write, made here so TensorRT can write it."""
    if options.get("trt_engine_cache_enable") != "True" or not options.get("trt_engine_cache_path"):
        return None
    path = Path(options["trt_engine_cache_path"])
    os.makedirs(path, exist_ok=True)
    return path
