"""The repository writer: one model directory in DESIGN.md's Triton-compatible layout.

    <repository>/<name>/config.pbtxt      Triton ModelConfig (service.model_config.ModelConfig)
    <repository>/<name>/vitserve.json     Manifest (service.manifest.Manifest)
    <repository>/<name>/<version>/model.onnx

Why its own module: this is the contract with the service (and with Triton), written with the
service's own schema classes so both sides agree by construction. Files are written to a temporary
name and renamed, and the manifest goes last, so a reader never sees a manifest whose files are
missing or whose hashes are stale.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.manifest import (
    CONFIG_FILENAME,
    INPUT_NAME,
    MANIFEST_FILENAME,
    MODEL_FILENAME,
    OUTPUT_NAME,
    Manifest,
    sha256_file,
)
from service.model_config import (
    Accelerator,
    DynamicBatching,
    ExecutionAccelerators,
    InstanceGroup,
    ModelConfig,
    ModelOptimization,
    QueuePolicy,
    TensorConfig,
)
from service.runtimes.onnxruntime.providers import profile_shapes, tensorrt_options

#: defaults for the dynamic batcher (Triton's `dynamic_batching` block; the service reads them back)
DEFAULT_MAX_QUEUE_DELAY_US = 2_000
DEFAULT_QUEUE_FACTOR = 8  # max_queue_size = factor x max_batch_size


def default_max_batch_size(input_size: tuple[int, int, int]) -> int:
    """64 for small inputs (demo, 32 px), 32 at 224 px and above."""
    return 64 if input_size[1] * input_size[2] <= 64 * 64 else 32


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 4 up to max_batch_size (inclusive of max_batch_size itself)."""
    sizes = [b for b in (4, 8, 16, 32, 64, 128, 256) if b < max_batch_size]
    return sizes + [max_batch_size]


def make_config(
    name: str,
    *,
    input_size: tuple[int, int, int],
    num_classes: int,
    max_batch_size: int | None = None,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    max_queue_size: int | None = None,
    tensorrt: Mapping[str, str] | None = None,
    backend: str | None = None,
    parameters: Mapping[str, str] | None = None,
) -> ModelConfig:
    """The Triton config for a `pixel_values [B, 3, H, W] -> logits [B, classes]` ONNX model.

    `backend` names another Triton backend (e.g. "openvino" for an IR copy; then no platform, as Triton wants
    it) and `parameters` that backend's config.pbtxt parameters (e.g. OpenVINO's HINT_BF16).

    `tensorrt`: Triton onnxruntime-backend TensorRT parameters (precision_mode, max_workspace_size_bytes,
    trt_engine_cache_enable, trt_engine_cache_path, ...) written as a `tensorrt` GPU execution
    accelerator, with an optimisation profile for batch 1..max_batch_size unless they give one, so
    Triton and vitserve build the same engines.
    """
    mbs = default_max_batch_size(input_size) if max_batch_size is None else max_batch_size
    if mbs < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {mbs}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    queue = DEFAULT_QUEUE_FACTOR * mbs if max_queue_size is None else max_queue_size
    if queue < 1:
        raise ValueError(f"max_queue_size must be >= 1, got {queue}")
    return ModelConfig(
        name=name,
        platform="" if backend else "onnxruntime_onnx",
        backend=backend,
        parameters=dict(parameters or {}),
        max_batch_size=mbs,
        input=[TensorConfig(name=INPUT_NAME, data_type="TYPE_FP32", dims=list(input_size))],
        output=[TensorConfig(name=OUTPUT_NAME, data_type="TYPE_FP32", dims=[num_classes])],
        dynamic_batching=DynamicBatching(
            preferred_batch_size=preferred_batch_sizes(mbs),
            max_queue_delay_microseconds=max_queue_delay_us,
            default_queue_policy=QueuePolicy(max_queue_size=queue),
        ),
        instance_group=[InstanceGroup(count=1, kind="KIND_AUTO")],
        latest_versions=1,
        optimization=_tensorrt_optimization(tensorrt, input_size, mbs) if tensorrt is not None else None,
    )


def _tensorrt_optimization(parameters: Mapping[str, str], input_size: tuple[int, int, int],
                           max_batch_size: int) -> ModelOptimization:
    params = {k: str(v) for k, v in parameters.items()}
    accelerator = Accelerator(name="tensorrt", parameters=params)
    # fail here, not at serving time, on a key or value the service (and Triton) would refuse
    options = tensorrt_options(accelerator, input_name=INPUT_NAME, input_dims=input_size,
                               max_batch_size=max_batch_size)
    if not any(k.startswith("trt_profile_") for k in params):
        params.update({k: options[k] for k in profile_shapes(INPUT_NAME, input_size, max_batch_size)})
    return ModelOptimization(execution_accelerators=ExecutionAccelerators(
        gpu_execution_accelerator=[Accelerator(name="tensorrt", parameters=params)]))


def default_labels(num_classes: int, *, digits: bool = False) -> list[str]:
    """'0'..'9' for the digits demo, else 'class_0'.. 'class_{n-1}'."""
    if digits:
        if num_classes != 10:
            raise ValueError(f"digit labels need 10 classes, got {num_classes}")
        return [str(i) for i in range(10)]
    return [f"class_{i}" for i in range(num_classes)]


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made the graph (those importable here)."""
    import importlib.metadata as md

    out = {}
    for dist in ("vitserve", "torch", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxscript", "timm"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _replace(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_model(
    repository: Path,
    *,
    onnx_file: Path | None = None,
    manifest: dict[str, Any],
    config: ModelConfig,
    version: int = 1,
    model_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write `<repository>/<name>/{config.pbtxt, vitserve.json, <version>/model.onnx}`; return the model dir.

    `model_files` (file name -> source) replaces `onnx_file` for a runtime with other files (OpenVINO's
    model.xml + model.bin). `manifest` holds the Manifest fields except `files`, which is computed here: the
    sha256 of each of this version's model files, plus the entries of other versions already in the directory
    whose files still exist (an older version stays listed and verifiable when a new one is added).
    """
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    name = manifest["name"]
    if config.name != name:
        raise ValueError(f"config name {config.name!r} != manifest name {name!r}")
    model_dir = repository / name
    if model_files is None:
        if onnx_file is None:
            raise ValueError("write_model needs onnx_file or model_files")
        model_files = {MODEL_FILENAME: onnx_file}
    written = {f"{version}/{filename}": source for filename, source in model_files.items()}
    for rel, source in written.items():
        _replace(source, model_dir / rel)

    files: dict[str, str] = {}
    old = model_dir / MANIFEST_FILENAME
    if old.exists():
        try:
            previous = Manifest.load(model_dir)
        except ValueError:
            previous = None
        if previous is not None:
            files.update({k: v for k, v in previous.files.items()
                          if not k.startswith(f"{version}/") and (model_dir / k).exists()})
    files.update({rel: sha256_file(model_dir / rel) for rel in written})
    validated = Manifest.model_validate({**manifest, "files": dict(sorted(files.items()))})

    tmp_cfg = model_dir / (CONFIG_FILENAME + ".tmp")
    config.save(tmp_cfg)
    os.replace(tmp_cfg, model_dir / CONFIG_FILENAME)
    tmp_manifest = model_dir / (MANIFEST_FILENAME + ".tmp")
    tmp_manifest.write_text(validated.model_dump_json(indent=2) + "\n")
    os.replace(tmp_manifest, model_dir / MANIFEST_FILENAME)
    return model_dir
