"""The results the pipeline and the runtimes answer with (a classification's predictions and timings); /v1 serves them
as they are (OpenAPI documents them)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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


class ClassifyResult(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]
    timings: Timings
