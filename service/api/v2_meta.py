"""Open Inference Protocol v2 (KServe / Triton REST): everything but the tensors.

Server and model metadata, the model configuration as Triton's /config endpoint prints it, the
statistics extension's response (shaped from the core's plain counts), and the repository index.
Pure data and functions (no routing, no model store); the /v2 router serves them. The tensors are
decoded in service/api/v2_codec.py and encoded in service/api/v2_response.py, with the shared wire
models in service/api/v2_wire.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from service.api.v2_wire import TensorSpec, WireModel, input_specs, output_specs
from service.model_config import ModelConfig
from service.stats import Duration, Phases, VersionCounts

# Triton's extension names; the ones vitserve implements.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
)


class ServerMetadata(WireModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(WireModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(WireModel):
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
    if cfg.backend:
        out["backend"] = cfg.backend
    elif cfg.platform == "onnxruntime_onnx":
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
    if cfg.default_model_filename:
        out["default_model_filename"] = cfg.default_model_filename
    if cfg.parameters:
        out["parameters"] = {k: {"string_value": v} for k, v in cfg.parameters.items()}
    return out


# --- statistics (GET /v2/models/{m}/stats) -----------------------------------------------------


class StatDuration(WireModel):
    count: int = 0
    ns: int = 0


class InferStatistics(WireModel):
    success: StatDuration = Field(default_factory=StatDuration)
    fail: StatDuration = Field(default_factory=StatDuration)
    queue: StatDuration = Field(default_factory=StatDuration)
    compute_input: StatDuration = Field(default_factory=StatDuration)
    compute_infer: StatDuration = Field(default_factory=StatDuration)
    compute_output: StatDuration = Field(default_factory=StatDuration)
    cache_hit: StatDuration = Field(default_factory=StatDuration)
    cache_miss: StatDuration = Field(default_factory=StatDuration)


class BatchStatistics(WireModel):
    batch_size: int
    compute_input: StatDuration = Field(default_factory=StatDuration)
    compute_infer: StatDuration = Field(default_factory=StatDuration)
    compute_output: StatDuration = Field(default_factory=StatDuration)


class ModelStatistics(WireModel):
    name: str
    version: str
    last_inference: int = Field(0, description="milliseconds since the epoch of the last execution")
    inference_count: int = Field(0, description="inferences performed (batch items, not requests)")
    execution_count: int = Field(0, description="model executions (batches)")
    inference_stats: InferStatistics = Field(default_factory=InferStatistics)
    batch_stats: list[BatchStatistics] = Field(default_factory=list)
    memory_usage: list[dict[str, Any]] = Field(default_factory=list)


class ModelStatisticsResponse(WireModel):
    model_stats: list[ModelStatistics]


def model_statistics(counts: VersionCounts) -> ModelStatistics:
    """Triton's statistics shape of one version's plain counts (service/stats.py)."""

    def duration(d: Duration) -> StatDuration:
        return StatDuration(count=d.count, ns=d.ns)

    def phases(p: Phases) -> dict[str, StatDuration]:
        return {"compute_input": duration(p.compute_input), "compute_infer": duration(p.compute_infer),
                "compute_output": duration(p.compute_output)}

    return ModelStatistics(
        name=counts.model,
        version=counts.version,
        last_inference=counts.last_inference_ms,
        inference_count=counts.inference_count,
        execution_count=counts.execution_count,
        inference_stats=InferStatistics(success=duration(counts.success), fail=duration(counts.fail),
                                        queue=duration(counts.queue), **phases(counts.request_phases)),
        batch_stats=[BatchStatistics(batch_size=size, **phases(p)) for size, p in sorted(counts.batches.items())],
    )


# --- repository index (POST /v2/repository/index) ----------------------------------------------

RepositoryState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


class RepositoryIndexEntry(WireModel):
    """One entry of Triton's repository index: {name, version, state, reason}."""

    name: str
    version: str | None = None
    state: RepositoryState | None = None
    reason: str | None = None


__all__ = [
    "SUPPORTED_EXTENSIONS", "BatchStatistics", "InferStatistics", "ModelMetadata", "ModelStatistics",
    "ModelStatisticsResponse", "RepositoryIndexEntry", "ServerMetadata", "StatDuration",
    "TensorMetadata", "config_to_v2_json", "model_metadata", "model_statistics", "server_metadata",
]
