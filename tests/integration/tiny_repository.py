"""A tiny Triton-layout model repository for service tests, built with onnx.helper (tests only).

Each model: pixel_values [b, 3, S, S] -> ReduceMean over H, W -> [b, 3] -> MatMul W [3, C] -> + bias
-> logits [b, C]; W and bias are seeded by (model, version), so versions give different numbers.
Broken variants reproduce load failures: a corrupt ONNX file (with a matching sha256), a sha256
mismatch, a missing model file.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import Costs, Manifest, PreprocessConfig, Provenance, sha256_file
from service.model_config import DynamicBatching, ModelConfig, QueuePolicy, TensorConfig

Breakage = Literal["none", "corrupt_onnx", "sha_mismatch", "missing_file"]


@dataclass
class TinyModel:
    name: str
    num_classes: int = 10
    size: int = 32
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    max_queue_size: int = 0
    versions: list[int] = field(default_factory=lambda: [1])
    latest_versions: int = 1
    breakage: Breakage = "none"
    hidden: int = 0  # > 0: flatten -> MatMul [3*S*S, hidden] -> Relu -> MatMul [hidden, C] (a model that takes time)
    # the manifest's preprocess.input_range: wide, because fake-runtime tests send request ids as pixel values
    # (None: the service derives it from mean/std)
    input_range: tuple[float, float] | None = (-1e6, 1e6)


def weights(name: str, version: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(f"{name}:{version}".encode()))
    return rng.normal(size=(3, num_classes)).astype(np.float32), rng.normal(size=(num_classes,)).astype(np.float32)


def hidden_weights(model: TinyModel, version: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(f"{model.name}:{version}:hidden".encode()))
    features = 3 * model.size * model.size
    w1 = (rng.normal(size=(features, model.hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.normal(size=(model.hidden, model.num_classes)) / np.sqrt(model.hidden)).astype(np.float32)
    return w1, w2


def expected_logits(model: TinyModel, version: int, pixel_values: np.ndarray) -> np.ndarray:
    w, b = weights(model.name, version, model.num_classes)
    if model.hidden:
        w1, w2 = hidden_weights(model, version)
        flat = pixel_values.reshape(pixel_values.shape[0], -1)
        return np.maximum(flat @ w1, 0) @ w2 + b
    return pixel_values.mean(axis=(2, 3)) @ w + b


def onnx_model(model: TinyModel, version: int) -> onnx.ModelProto:
    w, b = weights(model.name, version, model.num_classes)
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, model.size, model.size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.num_classes])
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    if model.hidden:
        w1, w2 = hidden_weights(model, version)
        inits = [
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(w2, "W2"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
        ]
        nodes = [
            helper.make_node("Reshape", ["pixel_values", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("MatMul", ["hr", "W2"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["logits"]),
        ]
    graph = helper.make_graph(nodes, model.name, [x], [y], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    return proto


def write_model(root: Path, model: TinyModel,
                build: Callable[[TinyModel, int], onnx.ModelProto] | None = None) -> Path:
    """Write `model` (every version, its manifest and config.pbtxt); `build` replaces the ONNX graph."""
    build = build or onnx_model
    directory = root / model.name
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for version in model.versions:
        vdir = directory / str(version)
        vdir.mkdir(exist_ok=True)
        path = vdir / "model.onnx"
        onnx.save(build(model, version), str(path))
        files[f"{version}/model.onnx"] = sha256_file(path)
        if model.breakage == "corrupt_onnx":
            path.write_bytes(b"this is not an onnx graph" * 10)
            files[f"{version}/model.onnx"] = sha256_file(path)
        elif model.breakage == "sha_mismatch":
            files[f"{version}/model.onnx"] = "0" * 64
        elif model.breakage == "missing_file":
            path.unlink()
    write_manifest(directory, model, files)
    triton_config(model).save(directory / "config.pbtxt")
    return directory


def triton_config(model: TinyModel) -> ModelConfig:
    """The config.pbtxt of a tiny model: its batching limits as Triton's dynamic_batching block."""
    return ModelConfig(
        name=model.name,
        max_batch_size=model.max_batch_size,
        input=[TensorConfig(name="pixel_values", dims=[3, model.size, model.size])],
        output=[TensorConfig(name="logits", dims=[model.num_classes])],
        dynamic_batching=DynamicBatching(
            preferred_batch_size=[model.max_batch_size],
            max_queue_delay_microseconds=model.max_queue_delay_us,
            default_queue_policy=QueuePolicy(max_queue_size=model.max_queue_size),
        ),
        latest_versions=model.latest_versions,
    )


def write_manifest(directory: Path, model: TinyModel, files: dict[str, str]) -> None:
    flops = 3 * model.size * model.size + 2 * 3 * model.num_classes + model.num_classes
    if model.hidden:
        flops = 2 * (3 * model.size * model.size * model.hidden + model.hidden * model.num_classes) + model.hidden
    Manifest(
        name=model.name,
        spec="tiny",
        preset="tiny",
        variants=[],
        num_classes=model.num_classes,
        labels=[f"class_{i}" for i in range(model.num_classes)],
        preprocess=PreprocessConfig(
            input_size=(3, model.size, model.size), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
            interpolation="bilinear", crop_pct=0.875, input_range=model.input_range,
        ),
        opset=18,
        costs=Costs(flops=flops, macs=3 * model.num_classes, parameters=4 * model.num_classes),
        files=files,
        provenance=Provenance(weights="random(seed=crc32(name:version))"),
    ).save(directory)


def add_version(root: Path, model: TinyModel, version: int) -> None:
    """Hot reload helper: write a new version directory and update the manifest's sha256 list."""
    directory = root / model.name
    vdir = directory / str(version)
    vdir.mkdir()
    tmp = vdir / "model.onnx.tmp"
    onnx.save(onnx_model(model, version), str(tmp))
    manifest = Manifest.load(directory)
    files = dict(manifest.files)
    files[f"{version}/model.onnx"] = sha256_file(tmp)
    write_manifest(directory, model, files)
    tmp.rename(vdir / "model.onnx")


def build_tiny_repository(root: Path, models: list[TinyModel]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for model in models:
        write_model(root, model)
    return root


DEFAULT_MODELS = [
    TinyModel("tiny_a"),
    TinyModel("tiny_b", num_classes=5, versions=[1, 2]),
    TinyModel("tiny_corrupt", breakage="corrupt_onnx"),
    TinyModel("tiny_badsha", breakage="sha_mismatch"),
]
#: the integration suite's repository: the defaults plus a heavy model (batching is visible in its timings)
INTEGRATION_MODELS = [*DEFAULT_MODELS, TinyModel("tiny_heavy", hidden=1024, max_batch_size=16)]
