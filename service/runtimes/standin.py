"""The off-CPU stand-in runtime: a model that computes nothing on the CPU and takes a GPU's time.

On a GPU a small model's batch costs the host almost nothing: the batch is handed to the device and
the thread waits. This runtime does exactly that without a device: `run` sleeps a fixed time per
batch (whatever its size, up to the max batch) and returns outputs of the right shape derived from
the inputs by a gather (a few numbers per row), so a test can check every result and a benchmark
sees only the front end's CPU cost. Served (runtimes table, service/runtimes/table.py) for config.pbtxt
`backend` or `platform` "vitserve_offcpu_standin"; the wait per batch is `VITSERVE_STANDIN_BATCH_MS`
(default 2 ms), read when a model loads.
`write_standin_model` writes such a model into a repository (tests, `vitserve-bench frontend`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from service.manifest import CONFIG_FILENAME, MODEL_FILENAME, Costs, Manifest, PreprocessConfig, Provenance, sha256_file
from service.model_config import DynamicBatching, ModelConfig, QueuePolicy, TensorConfig
from service.runtimes.base import InferenceRuntime, RuntimeSpec
from service.runtimes.table import RuntimeBackend

STANDIN_PLATFORM = "vitserve_offcpu_standin"
BATCH_MS_ENV = "VITSERVE_STANDIN_BATCH_MS"
DEFAULT_BATCH_MS = 2.0
#: the version file of a stand-in model: read by nobody, hashed like any model file
STANDIN_FILE_TEXT = b"vitserve off-CPU stand-in: this runtime computes nothing on the CPU\n"


def standin_outputs(pixel_values: np.ndarray, num_classes: int) -> np.ndarray:
    """logits[i, j] = pixel_values[i].flat[j * stride]: a gather, checkable from the inputs alone."""
    flat = pixel_values.reshape(pixel_values.shape[0], -1)
    stride = max(1, flat.shape[1] // num_classes)
    index = (np.arange(num_classes) * stride) % flat.shape[1]
    return np.ascontiguousarray(flat[:, index], dtype=np.float32)


class OffCpuRuntime(InferenceRuntime):
    """Waits `batch_s` per batch (the thread sleeps: no CPU), returns `standin_outputs`."""

    provider = "OffCpuStandIn"

    def __init__(self, spec: RuntimeSpec) -> None:
        super().__init__(spec)
        text = os.environ.get(BATCH_MS_ENV, "").strip()
        batch_ms = float(text) if text else DEFAULT_BATCH_MS
        if not 0 <= batch_ms <= 60_000:
            raise ValueError(f"{BATCH_MS_ENV} must be in 0..60000 ms, got {batch_ms}")
        self.batch_s = batch_ms / 1000
        self.provider_note = f"off-CPU stand-in: {batch_ms:g} ms per batch of up to {spec.max_batch_size}"

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        if pixel_values.shape[0] > self.spec.max_batch_size:
            raise ValueError(f"batch of {pixel_values.shape[0]} above the max batch {self.spec.max_batch_size}")
        time.sleep(self.batch_s)
        return standin_outputs(pixel_values, self.spec.manifest.num_classes)


def write_standin_model(
    root: Path, name: str, *, size: int = 224, num_classes: int = 1000, max_batch_size: int = 64,
    max_queue_delay_us: int = 0, max_queue_size: int = 0,
) -> Path:
    """Write `<root>/<name>/` (config.pbtxt, vitserve.json, 1/model.onnx) for the stand-in runtime."""
    directory = root / name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    model_file = directory / "1" / MODEL_FILENAME
    model_file.write_bytes(STANDIN_FILE_TEXT)
    config = ModelConfig(
        name=name,
        platform=STANDIN_PLATFORM,
        max_batch_size=max_batch_size,
        input=[TensorConfig(name="pixel_values", data_type="TYPE_FP32", dims=[3, size, size])],
        output=[TensorConfig(name="logits", data_type="TYPE_FP32", dims=[num_classes])],
        dynamic_batching=DynamicBatching(
            max_queue_delay_microseconds=max_queue_delay_us,
            default_queue_policy=QueuePolicy(max_queue_size=max_queue_size) if max_queue_size else None,
        ),
    )
    config.save(directory / CONFIG_FILENAME)
    Manifest(
        name=name,
        spec="standin",
        preset="standin",
        num_classes=num_classes,
        labels=[f"class_{i}" for i in range(num_classes)],
        preprocess=PreprocessConfig(input_size=(3, size, size), crop_pct=1.0, interpolation="bilinear",
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        opset=18,
        costs=Costs(flops=0, macs=0, parameters=0),
        provenance=Provenance(weights="none: off-CPU stand-in"),
        files={f"1/{MODEL_FILENAME}": sha256_file(model_file)},
    ).save(directory)
    return directory


#: the runtimes table's entry (service/runtimes/table.py names it for STANDIN_PLATFORM)
BACKEND = RuntimeBackend(OffCpuRuntime)
