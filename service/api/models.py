"""The model as /v1/models and the repository extension show it: wire shapes built from the catalog's plain data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.catalog import Catalog, ModelHandle
from service.loader import batch_limits, instance_count
from service.manifest import Evaluation
from service.repository import list_model_names
from service.settings import Settings


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


def model_info(catalog: Catalog, name: str) -> ModelInfo:
    """The model `name` (ModelNotFound when the catalog does not know it)."""
    return handle_info(catalog.handle(name), catalog.settings)


def model_infos(catalog: Catalog) -> list[ModelInfo]:
    return [model_info(catalog, n) for n in catalog.model_names()]


def handle_info(h: ModelHandle, settings: Settings) -> ModelInfo:
    """One handle's state, its entry's manifest and batching, and its default version's provider."""
    entry, default = h.entry, h.default
    info = ModelInfo(name=h.name, state=h.state, reason=h.reason,
                     load_seconds=h.load_seconds)
    if entry is not None:
        m = entry.manifest
        limits = batch_limits(entry, settings)
        db = entry.config.dynamic_batching
        info.available_versions = sorted(entry.versions)
        info.preset, info.variants, info.spec = m.preset, list(m.variants), m.spec
        info.flops, info.parameters, info.num_classes = m.costs.flops, m.costs.parameters, m.num_classes
        info.input_size, info.evaluation = list(m.preprocess.input_size), m.evaluation
        info.batching = BatchingInfo(
            max_batch_size=limits.max_batch_size,
            max_queue_delay_ms=limits.max_queue_delay_s * 1000,
            max_queue_size=limits.max_queue_size,
            preferred_batch_sizes=list(db.preferred_batch_size) if db else [],
            instances=instance_count(entry, settings),
        )
    if default is not None:
        info.version, info.versions = default.version, sorted(h.versions)
        info.provider, info.provider_note = default.runtime.provider, default.runtime.provider_note
        info.last_error = default.observer.last_error
    return info


_INDEX_STATES = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}


def index_entries(catalog: Catalog) -> list[dict[str, str]]:
    """Triton's repository index: every model directory, loaded or not."""
    names = set(catalog.model_names()) | set(list_model_names(catalog.settings.repository))
    out = []
    for name in sorted(names):
        h = catalog.find(name)
        state = _INDEX_STATES.get(h.state if h else "", "UNAVAILABLE")
        version = str(h.default.version) if h and h.default else ""
        reason = (h.reason or "") if h else "not loaded"
        out.append({"name": name, "version": version, "state": state, "reason": reason})
    return out
