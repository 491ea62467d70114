"""/v2: the Open Inference Protocol (KServe v2 / Triton REST), so `tritonclient.http` works unchanged.

Health, server and model metadata, model config, infer (JSON tensors and Triton's binary tensor
extension, via the pure request decoder in service/api/v2_codec.py and response encoder in
service/api/v2_response.py), statistics, and the repository extension (index, load, unload — the last
two behind the API key). Statistics are the core's plain counts, shaped into Triton's response
here (service/api/v2_meta.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from service.api.common import check_key
from service.api.models import ModelInfo, index_entries, model_info
from service.api.request_view import AsgiRequest, RequestView
from service.api.routes import Route, route
from service.api.v2_infer import V2Infer, wire_version
from service.api.v2_meta import (
    ModelMetadata,
    ModelStatisticsResponse,
    RepositoryIndexEntry,
    ServerMetadata,
    config_to_v2_json,
    model_metadata,
    model_statistics,
    server_metadata,
)
from service.api.v2_wire import InferenceRequest, InferenceResponse
from service.errors import InvalidInput, PayloadTooLarge, validation_message
from service.loader import ModelStore
from service.pipeline import Pipeline

try:
    from importlib.metadata import version as _dist_version

    SERVER_VERSION = _dist_version("vitserve")
except Exception:  # noqa: BLE001 - running from a source tree
    SERVER_VERSION = "0.0.0"


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool
    error: str | None = None


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool
    error: str | None = None


class RepositoryIndexRequest(BaseModel):
    """Body of POST /v2/repository/index (optional): `{"ready": true}` lists only ready models."""

    model_config = ConfigDict(extra="forbid")

    ready: bool = False


INDEX_BODY_BYTES = 1024


async def read_small_body(request: Request, limit: int) -> bytes:
    """The body of a request that needs only a few bytes: 413 as soon as more than `limit` arrive."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"this endpoint takes a body of at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


INFER_DOC: dict[str, Any] = {
    "response_model": InferenceResponse,
    "responses": {400: {}, 404: {}, 413: {}, 503: {}, 504: {}},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": InferenceRequest.model_json_schema()},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary",
                               "description": "JSON header of Inference-Header-Content-Length bytes, "
                                              "then binary tensors"}
                },
            },
        }
    },
}
INDEX_DOC: dict[str, Any] = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": RepositoryIndexRequest.model_json_schema()}}}}


class V2Endpoints:
    """/v2: every answer from the pipeline (metadata, configuration and readiness too) and the loader."""

    def __init__(self, pipeline: Pipeline, loader: ModelStore) -> None:
        self.pipeline, self.loader = pipeline, loader
        self.catalog, self.settings = pipeline.store, pipeline.settings
        self.infer_path = V2Infer(pipeline)

    def routes(self) -> list[Route]:
        meta: dict[str, Any] = {"response_model": ModelMetadata}
        ready: dict[str, Any] = {"response_model": ModelReadyResponse,
                                 "responses": {503: {"model": ModelReadyResponse}}}
        stats: dict[str, Any] = {"response_model": ModelStatisticsResponse}
        control: dict[str, Any] = {"response_model": ModelInfo}
        return [
            route("GET", "", self.server_meta, response_model=ServerMetadata, summary="Server metadata"),
            route("GET", "/health/live", self.live, response_model=LiveResponse, summary="Liveness"),
            route("GET", "/health/ready", self.ready, response_model=ReadyResponse,
                  summary="Readiness (503 while loading or draining)", responses={503: {"model": ReadyResponse}}),
            route("GET", "/models/stats", self.all_stats, **stats, summary="Statistics of every model"),
            route("GET", "/models/{model}", self.model_meta, **meta, summary="Model metadata"),
            route("GET", "/models/{model}/versions/{version}", self.model_version_meta, **meta,
                  summary="Model version metadata"),
            route("GET", "/models/{model}/ready", self.model_ready, **ready, summary="Model readiness"),
            route("GET", "/models/{model}/versions/{version}/ready", self.model_version_ready, **ready,
                  summary="Model version readiness"),
            route("GET", "/models/{model}/config", self.model_config,
                  summary="Model configuration (Triton JSON form)"),
            route("GET", "/models/{model}/versions/{version}/config", self.model_version_config,
                  summary="Model configuration (Triton JSON form)"),
            route("POST", "/models/{model}/infer", self.infer, hot=self.infer_view,
                  summary="Inference (JSON or binary tensor extension)", **INFER_DOC),
            route("POST", "/models/{model}/versions/{version}/infer", self.infer_version,
                  hot=self.infer_version_view, summary="Inference on a version", **INFER_DOC),
            route("GET", "/models/{model}/stats", self.stats, **stats, summary="Model statistics"),
            route("GET", "/models/{model}/versions/{version}/stats", self.version_stats, **stats,
                  summary="Model version statistics"),
            route("POST", "/repository/index", self.repository_index, response_model=list[RepositoryIndexEntry],
                  summary="Repository index", openapi_extra=INDEX_DOC, responses={400: {}, 413: {}}),
            route("POST", "/repository/models/{model}/load", self.load, **control,
                  summary="Load or reload a model (API key)", responses={400: {}, 401: {}, 404: {}}),
            route("POST", "/repository/models/{model}/unload", self.unload, **control,
                  summary="Unload a model after draining it (API key)", responses={401: {}, 404: {}}),
        ]

    # -- server ------------------------------------------------------------------------------
    async def server_meta(self) -> ServerMetadata:
        return server_metadata(SERVER_VERSION)

    async def live(self) -> LiveResponse:
        return LiveResponse(live=self.catalog.live)

    async def ready(self) -> Any:
        if self.catalog.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": "server is not ready (loading or shutting down)"},
                            status_code=503)

    # -- models ------------------------------------------------------------------------------
    def _metadata(self, model: str, version: str | None) -> ModelMetadata:
        d = self.pipeline.describe(model, wire_version(version))
        return model_metadata(model, d.versions, d.config)

    async def model_meta(self, model: str) -> ModelMetadata:
        return self._metadata(model, None)

    async def model_version_meta(self, model: str, version: str) -> ModelMetadata:
        return self._metadata(model, version)

    def _ready(self, model: str, version: str | None) -> JSONResponse:
        reason = self.pipeline.readiness(model, wire_version(version))
        if reason is None:
            return JSONResponse({"name": model, "ready": True})
        return JSONResponse({"name": model, "ready": False, "error": reason}, status_code=503)

    async def model_ready(self, model: str) -> Any:
        return self._ready(model, None)

    async def model_version_ready(self, model: str, version: str) -> Any:
        return self._ready(model, version)

    async def model_config(self, model: str) -> dict[str, Any]:
        return config_to_v2_json(self.pipeline.describe(model).config)

    async def model_version_config(self, model: str, version: str) -> dict[str, Any]:
        return config_to_v2_json(self.pipeline.describe(model, wire_version(version)).config)

    # -- inference (hot: served from a RequestView and the path, see service/api/fast_path.py) ----
    async def infer_view(self, request: RequestView, model: str) -> Response:
        return await self.infer_path.serve(request, model, None)

    async def infer_version_view(self, request: RequestView, model: str, version: str) -> Response:
        return await self.infer_path.serve(request, model, version)

    async def infer(self, model: str, request: Request) -> Response:
        return await self.infer_view(AsgiRequest(request), model)

    async def infer_version(self, model: str, version: str, request: Request) -> Response:
        return await self.infer_version_view(AsgiRequest(request), model, version)

    # -- statistics --------------------------------------------------------------------------
    async def _statistics(self, model: str | None = None, version: int | None = None) -> ModelStatisticsResponse:
        counts = await self.catalog.statistics(model, version)
        return ModelStatisticsResponse(model_stats=[model_statistics(c) for c in counts])

    async def all_stats(self) -> ModelStatisticsResponse:
        return await self._statistics()

    async def stats(self, model: str) -> ModelStatisticsResponse:
        return await self._statistics(model)

    async def version_stats(self, model: str, version: str) -> ModelStatisticsResponse:
        return await self._statistics(model, wire_version(version))

    # -- repository --------------------------------------------------------------------------
    async def repository_index(self, request: Request) -> list[RepositoryIndexEntry]:
        body = await read_small_body(request, INDEX_BODY_BYTES)
        ready_only = False
        if body.strip():
            try:
                ready_only = RepositoryIndexRequest.model_validate_json(body).ready
            except ValidationError as exc:
                raise InvalidInput(validation_message(exc.errors(), prefix=("body",))) from None
        entries = [RepositoryIndexEntry(**e) for e in index_entries(self.catalog)]
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    async def load(self, model: str, request: Request) -> ModelInfo:
        check_key(request, self.settings.api_key, required=True, what="repository control")
        await self.loader.load(model)
        return model_info(self.catalog, model)

    async def unload(self, model: str, request: Request) -> ModelInfo:
        check_key(request, self.settings.api_key, required=True, what="repository control")
        await self.loader.unload(model)
        return model_info(self.catalog, model)
