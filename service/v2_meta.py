"""Open Inference Protocol v2 (KServe / Triton REST): everything but the tensors.

Server and model metadata, the model configuration as Triton's /config endpoint prints it, the
statistics extension's response and an accumulator that fills it, and the repository index.
Pure data and functions (no routing, no registry); the /v2 router serves them. The tensor codec
is service/v2_codec.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.model_config import ModelConfig
from service.v2_codec import TensorSpec, input_specs, output_specs

# Triton's extension names; the ones vitserve implements.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ServerMetadata(_Wire):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Wire):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Wire):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def server_metadata(version: str, extensions: Sequence[str] = SUPPORTED_EXTENSIONS) -> ServerMetadata:
    return ServerMetadata(name="vitserve", version=version, extensions=list(extensions))


def model_metadata(name: str, versions: Sequence[str | int], cfg: ModelConfig) -> ModelMetadata:
    """Triton's model metadata: a batching model's shapes start with -1 (the batch dimension)."""
    batch = [-1] if cfg.max_batch_size > 0 else []

    def meta(specs: dict[str, TensorSpec]) -> list[TensorMetadata]:
        return [TensorMetadata(name=n, datatype=s.datatype, shape=batch + list(s.dims)) for n, s in specs.items()]

    return ModelMetadata(
        name=name,
        versions=[str(v) for v in versions],
        platform=cfg.platform,
        inputs=meta(input_specs(cfg)),
        outputs=meta(output_specs(cfg)),
    )


# --- model configuration (GET /v2/models/{m}/config) -------------------------------------------


def config_to_v2_json(cfg: ModelConfig) -> dict[str, Any]:
    """The model config as Triton returns it over HTTP: the protobuf's JSON with Triton's field names
    (integers as numbers, as Triton's server prints them)."""
    out: dict[str, Any] = {
        "name": cfg.name,
        "platform": cfg.platform,
        "version_policy": {"latest": {"num_versions": cfg.latest_versions}},
        "max_batch_size": cfg.max_batch_size,
        "input": [
            {"name": t.name, "data_type": t.data_type, "format": "FORMAT_NONE", "dims": list(t.dims),
             "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}
            for t in cfg.input
        ],
        "output": [
            {"name": t.name, "data_type": t.data_type, "dims": list(t.dims), "label_filename": "",
             "is_shape_tensor": False}
            for t in cfg.output
        ],
    }
    if cfg.platform == "onnxruntime_onnx":
        out["backend"] = "onnxruntime"
    if cfg.dynamic_batching is not None:
        db = cfg.dynamic_batching
        batching: dict[str, Any] = {
            "preferred_batch_size": list(db.preferred_batch_size),
            "max_queue_delay_microseconds": db.max_queue_delay_microseconds,
            "preserve_ordering": False,
        }
        if db.default_queue_policy is not None:
            batching["default_queue_policy"] = db.default_queue_policy.model_dump()
        out["dynamic_batching"] = batching
    if cfg.instance_group:
        out["instance_group"] = [{"kind": g.kind, "count": g.count} for g in cfg.instance_group]
    if cfg.optimization is not None:
        out["optimization"] = cfg.optimization.model_dump(exclude_none=True)
    return out


# --- statistics (GET /v2/models/{m}/stats) -----------------------------------------------------


class StatDuration(_Wire):
    count: int = 0
    ns: int = 0


class InferStatistics(_Wire):
    success: StatDuration = Field(default_factory=StatDuration)
    fail: StatDuration = Field(default_factory=StatDuration)
    queue: StatDuration = Field(default_factory=StatDuration)
    compute_input: StatDuration = Field(default_factory=StatDuration)
    compute_infer: StatDuration = Field(default_factory=StatDuration)
    compute_output: StatDuration = Field(default_factory=StatDuration)
    cache_hit: StatDuration = Field(default_factory=StatDuration)
    cache_miss: StatDuration = Field(default_factory=StatDuration)


class BatchStatistics(_Wire):
    batch_size: int
    compute_input: StatDuration = Field(default_factory=StatDuration)
    compute_infer: StatDuration = Field(default_factory=StatDuration)
    compute_output: StatDuration = Field(default_factory=StatDuration)


class ModelStatistics(_Wire):
    name: str
    version: str
    last_inference: int = Field(0, description="milliseconds since the epoch of the last execution")
    inference_count: int = Field(0, description="inferences performed (batch items, not requests)")
    execution_count: int = Field(0, description="model executions (batches)")
    inference_stats: InferStatistics = Field(default_factory=InferStatistics)
    batch_stats: list[BatchStatistics] = Field(default_factory=list)
    memory_usage: list[dict[str, Any]] = Field(default_factory=list)


class ModelStatisticsResponse(_Wire):
    model_stats: list[ModelStatistics]


class ModelStatsAccumulator:
    """Triton-style cumulative statistics for one model version; thread-safe.

    Per request (`record_success` / `record_failure`): success or fail duration end to end, time
    queued and the compute phases of the batch it rode in. Per execution (`record_execution`):
    inference and execution counts and the per-batch-size compute times.
    """

    _PHASES = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = InferStatistics()
        self._batches: dict[int, BatchStatistics] = {}
        self._inference_count = 0
        self._execution_count = 0
        self._last_inference_ms = 0

    @staticmethod
    def _add(d: StatDuration, ns: int) -> None:
        d.count += 1
        d.ns += max(0, int(ns))

    def record_success(
        self, *, total_ns: int, queue_ns: int, compute_input_ns: int = 0, compute_infer_ns: int = 0,
        compute_output_ns: int = 0,
    ) -> None:
        with self._lock:
            s = self._stats
            self._add(s.success, total_ns)
            self._add(s.queue, queue_ns)
            for phase, ns in zip(self._PHASES, (compute_input_ns, compute_infer_ns, compute_output_ns)):
                self._add(getattr(s, phase), ns)

    def record_failure(self, *, total_ns: int) -> None:
        with self._lock:
            self._add(self._stats.fail, total_ns)

    def record_execution(
        self, *, batch_size: int, compute_input_ns: int = 0, compute_infer_ns: int = 0, compute_output_ns: int = 0,
        now_ms: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with self._lock:
            self._inference_count += batch_size
            self._execution_count += 1
            self._last_inference_ms = int(time.time() * 1000) if now_ms is None else now_ms
            b = self._batches.setdefault(batch_size, BatchStatistics(batch_size=batch_size))
            for phase, ns in zip(self._PHASES, (compute_input_ns, compute_infer_ns, compute_output_ns)):
                self._add(getattr(b, phase), ns)

    def snapshot(self, name: str, version: str) -> ModelStatistics:
        with self._lock:
            return ModelStatistics(
                name=name,
                version=version,
                last_inference=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                inference_stats=self._stats.model_copy(deep=True),
                batch_stats=[self._batches[k].model_copy(deep=True) for k in sorted(self._batches)],
            )


# --- repository index (POST /v2/repository/index) ----------------------------------------------

RepositoryState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


class RepositoryIndexEntry(_Wire):
    """One entry of Triton's repository index: {name, version, state, reason}."""

    name: str
    version: str | None = None
    state: RepositoryState | None = None
    reason: str | None = None


__all__ = [
    "SUPPORTED_EXTENSIONS", "BatchStatistics", "InferStatistics", "ModelMetadata", "ModelStatistics",
    "ModelStatisticsResponse", "ModelStatsAccumulator", "RepositoryIndexEntry", "ServerMetadata", "StatDuration",
    "TensorMetadata", "config_to_v2_json", "model_metadata", "server_metadata",
]
