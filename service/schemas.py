"""Response and request models shared by the model store, the pipeline and the /v1 router (OpenAPI documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.manifest import Evaluation


class Prediction(BaseModel):
    label: str
    index: int = Field(ge=0)
    score: float = Field(description="softmax probability")


class Timings(BaseModel):
    """Milliseconds spent in each stage of one request."""

    queue_ms: float = Field(description="waiting in the model's batch queue")
    preprocess_ms: float = Field(0.0, description="decoding and transforming the image")
    compute_ms: float = Field(description="ONNX Runtime run of the whole batch this request was part of")
    total_ms: float = Field(description="from arrival at the service core to the answer")
    batch_size: int = Field(description="images in the batch this request was computed in")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int = Field(description="queue bound in images")
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    instances: int = Field(
        1, description="execution instances: batches computed at once, sharing the session's threads")


ModelStateName = Literal["ready", "loading", "failed", "unloading", "unloaded"]


class ModelInfo(BaseModel):
    """One model as /v1/models and /v2/repository/index see it."""

    name: str
    state: ModelStateName
    reason: str | None = Field(None, description="why the model is not ready (failed / unloaded)")
    version: int | None = Field(None, description="default (highest loaded) version")
    versions: list[int] = Field(default_factory=list, description="loaded versions")
    available_versions: list[int] = Field(default_factory=list, description="versions on disk")
    provider: str | None = Field(None, description="execution provider the session really got")
    provider_note: str | None = Field(
        None, description="why not a provider requested ahead of it (e.g. no NVIDIA driver; no tensorrt accelerator "
        "in config.pbtxt)"
    )
    preset: str | None = None
    variants: list[str] = Field(default_factory=list)
    spec: str | None = None
    flops: int | None = Field(None, description="FLOPs per image")
    parameters: int | None = None
    num_classes: int | None = None
    input_size: list[int] | None = None
    batching: BatchingInfo | None = None
    load_seconds: float | None = None
    last_error: str | None = Field(None, description="the last runtime failure of a batch (the model still serves)")
    evaluation: Evaluation | None = Field(
        None, description="held-out accuracy from the manifest (top-1/top-5, dataset identity, recipe); compare "
                          "accuracies only between models with the same evaluation.dataset identity")


class ClassifyResult(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]
    timings: Timings
