"""/v2: the Open Inference Protocol (KServe v2 / Triton REST), so `tritonclient.http` works unchanged.

Health, server and model metadata, model config, infer (JSON tensors and Triton's binary tensor
extension, via the pure request decoder in service/api/v2_codec.py and response encoder in
service/api/v2_response.py), statistics, and the repository extension (index, load, unload — the last
two behind the API key). Statistics are the core's plain counts, shaped into Triton's response
here (service/api/v2_meta.py).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from service.api.common import cancel_on_disconnect, check_key, model_label, track
from service.api.fast_path import HotRoutes, hot_routes
from service.api.models import ModelInfo, index_entries, model_info
from service.api.request_view import AsgiRequest, RequestView
from service.api.v2_codec import decode_content_encoding, parse_header_length, parse_infer_request, request_timeout_s
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
from service.api.v2_response import (
    COMPRESS_ON_LOOP_BYTES,
    ENCODE_ON_LOOP_NUMBERS,
    compressed,
    encode_infer_response,
    response_encoding,
)
from service.api.v2_wire import HEADER_LENGTH_HEADER, InferenceRequest, InferenceResponse, TensorSpec, input_specs
from service.catalog import LoadedVersion
from service.errors import InvalidInput, ModelNotFound, PayloadTooLarge, validation_message
from service.loader import ModelStore
from service.model_config import InstanceGroup
from service.pipeline import Pipeline
from service.repository import ModelEntry, parse_version

try:
    from importlib.metadata import version as _dist_version

    SERVER_VERSION = _dist_version("vitserve")
except Exception:  # noqa: BLE001 - running from a source tree
    SERVER_VERSION = "0.0.0"


LARGE_BODY_BYTES = 256 * 1024
JSON_BYTES_PER_NUMBER = 32
JSON_ENVELOPE_BYTES = 64 * 1024
#: separators a legal request may hold beside one per number (shape, parameters, several inputs/outputs)
JSON_ENVELOPE_COMMAS = 4096


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


def _encode_and_compress(
    encode: Callable[[], tuple[bytes, dict[str, str]]], encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    """`encode()` compressed in `encoding`: one hop to a worker thread for both."""
    return compressed(*encode(), encoding)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_version(text)
    except ValueError:
        raise ModelNotFound(f"no version {text!r}") from None


def register_v2(app: FastAPI, pipeline: Pipeline, loader: ModelStore) -> HotRoutes:
    """Declare every /v2 route; return the hot ones (for the fast path)."""
    router = APIRouter(prefix="/v2", tags=["v2"])
    store, settings, metrics = pipeline.store, pipeline.settings, pipeline.metrics

    def statistics(model: str | None = None, version: int | None = None) -> ModelStatisticsResponse:
        return ModelStatisticsResponse(model_stats=[model_statistics(c) for c in store.statistics(model, version)])

    @router.get("", response_model=ServerMetadata, summary="Server metadata")
    async def server_meta() -> ServerMetadata:
        return server_metadata(SERVER_VERSION)

    @router.get("/health/live", response_model=LiveResponse, summary="Liveness")
    async def live() -> LiveResponse:
        return LiveResponse(live=store.live)

    @router.get("/health/ready", response_model=ReadyResponse, summary="Readiness (503 while loading or draining)",
                responses={503: {"model": ReadyResponse}})
    async def ready() -> Any:
        if store.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": "server is not ready (loading or shutting down)"},
                            status_code=503)

    def _metadata(model: str, version: str | None) -> ModelMetadata:
        v = _version(version)
        entry = store.entry(model)
        info = model_info(store, model)
        if v is not None and v not in entry.versions:
            raise ModelNotFound(f"model {model} has no version {v}")
        versions = [v] if v is not None else (info.versions or info.available_versions)
        return model_metadata(model, versions, _effective_config(model))

    def _effective_config(model: str) -> Any:
        entry = store.entry(model)
        info = model_info(store, model)
        cfg = entry.config
        if info.batching is not None and info.batching.max_batch_size != cfg.max_batch_size:
            cfg = cfg.model_copy(update={"max_batch_size": info.batching.max_batch_size})
        if info.batching is not None and sum(g.count for g in cfg.instance_group) != info.batching.instances:
            cfg = cfg.model_copy(update={"instance_group": [InstanceGroup(count=info.batching.instances)]})
        return cfg

    @router.get("/models/stats", response_model=ModelStatisticsResponse, summary="Statistics of every model")
    async def all_stats() -> ModelStatisticsResponse:
        return statistics()

    @router.get("/models/{model}", response_model=ModelMetadata, summary="Model metadata")
    async def model_meta(model: str) -> ModelMetadata:
        return _metadata(model, None)

    @router.get("/models/{model}/versions/{version}", response_model=ModelMetadata, summary="Model version metadata")
    async def model_version_meta(model: str, version: str) -> ModelMetadata:
        return _metadata(model, version)

    async def _ready(model: str, version: str | None) -> Any:
        v = _version(version)
        ok = store.is_model_ready(model, v)
        if ok:
            return JSONResponse({"name": model, "ready": True})
        info = model_info(store, model)
        if v is not None and v not in info.available_versions:
            raise ModelNotFound(f"model {model} has no version {v}")
        reason = f"model {model} is {info.state}" + (f": {info.reason}" if info.reason else "")
        if v is not None and info.state == "ready":
            reason = f"model {model} version {v} is not loaded"
        return JSONResponse({"name": model, "ready": False, "error": reason}, status_code=503)

    @router.get("/models/{model}/ready", response_model=ModelReadyResponse, summary="Model readiness",
                responses={503: {"model": ModelReadyResponse}})
    async def model_ready(model: str) -> Any:
        return await _ready(model, None)

    @router.get("/models/{model}/versions/{version}/ready", response_model=ModelReadyResponse,
                summary="Model version readiness", responses={503: {"model": ModelReadyResponse}})
    async def model_version_ready(model: str, version: str) -> Any:
        return await _ready(model, version)

    @router.get("/models/{model}/config", summary="Model configuration (Triton JSON form)")
    async def model_config(model: str) -> dict[str, Any]:
        return config_to_v2_json(_effective_config(model))

    @router.get("/models/{model}/versions/{version}/config", summary="Model configuration (Triton JSON form)")
    async def model_version_config(model: str, version: str) -> dict[str, Any]:
        _metadata(model, version)
        return config_to_v2_json(_effective_config(model))

    async def _infer(model: str, version: str | None, request: RequestView) -> Response:
        async with track(metrics, model_label(model, store.model_names()), "v2_infer"):
            start = time.monotonic()
            check_key(request, settings.inference_api_key, required=False, what="inference")
            v = _version(version)
            with pipeline.accept(model, v) as lv:  # 404 / 503 (not ready, queue full) before reading
                return await _infer_accepted(lv, v is not None, request, start)

    inputs_cache: dict[str, tuple[ModelEntry, dict[str, TensorSpec], int | None]] = {}

    def _inputs_of(model: str, entry: ModelEntry) -> tuple[dict[str, TensorSpec], int | None]:
        """The model's input specs and numbers per batch item (None when a dimension is variable), per entry."""
        cached = inputs_cache.get(model)
        if cached is None or cached[0] is not entry:  # first request, or the model was reloaded
            specs = input_specs(entry.config)
            fixed = all(d >= 0 for spec in specs.values() for d in spec.dims)
            numbers = sum(math.prod(spec.dims) for spec in specs.values()) if fixed else None
            cached = inputs_cache[model] = (entry, specs, numbers)
        return cached[1], cached[2]

    async def _infer_accepted(lv: LoadedVersion, pinned: bool, request: RequestView, start: float) -> Response:
        """The body of an admitted v2 request: read, parse (off the loop when large), infer, encode."""
        model, manifest = lv.model, lv.entry.manifest
        max_batch = pipeline.max_images(lv)
        body = await request.body()
        encoding = request.headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() != "identity":
            # a few KB can inflate to the body limit: not on the event loop
            body = await store.run_blocking(functools.partial(
                decode_content_encoding, body, encoding, max_size=settings.max_body_bytes))
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH_HEADER))
        specs, image_numbers = _inputs_of(model, lv.entry)
        json_bytes = len(body) if header_length is None else min(header_length, len(body))
        if image_numbers is not None:
            # a JSON tensor is ~10-25 bytes per number: refuse a JSON part (the whole body, or the header
            # before binary tensors; after inflating) no legal request can need, before pydantic builds
            # millions of Python objects (it holds the GIL, stalling every other request)
            numbers = max_batch * image_numbers
            limit = numbers * JSON_BYTES_PER_NUMBER + JSON_ENVELOPE_BYTES
            if json_bytes > limit:
                raise PayloadTooLarge(
                    f"JSON part of {json_bytes} bytes exceeds {limit} bytes for {numbers} numbers; "
                    "use the binary tensor extension for large tensors"
                )
            # short numbers ("0,") fit many more per byte than the size bound assumes: count the separators
            # (a C-speed scan that builds nothing) before the parser would build a Python object for each
            if json_bytes > JSON_ENVELOPE_BYTES and body.count(b",", 0, json_bytes) > numbers + JSON_ENVELOPE_COMMAS:
                raise PayloadTooLarge(
                    f"JSON part holds more than the {numbers} numbers {model!r} can take in one request; "
                    "use the binary tensor extension for large tensors"
                )
        parse = functools.partial(
            parse_infer_request,
            body,
            header_length,
            expected_inputs=specs,
            max_batch_size=max_batch,
        )
        # a large JSON tensor takes a while to parse: not on the event loop
        parsed, arrays = await store.run_blocking(parse) if json_bytes > LARGE_BODY_BYTES else parse()
        timeout = request_timeout_s(parsed)
        deadline = pipeline.deadline(timeout * 1000 if timeout else None, start)
        pixels = arrays[manifest.input_name]
        out = await cancel_on_disconnect(request, pipeline.run(lv, pixels, deadline, pinned=pinned))
        served = out.served.entry.manifest  # the version that computed it (a newer one after a swap)
        encode = functools.partial(
            encode_infer_response, model, str(out.version), {served.output_name: out.outputs}, parsed,
            labels=served.labels,
        )
        payload, headers = await _encoded(encode, out.outputs.size, request.headers.get("accept-encoding"))
        content_type = headers.pop("Content-Type", "application/json")
        return Response(content=payload, media_type=content_type, headers=headers)

    async def _encoded(encode: Callable[[], tuple[bytes, dict[str, str]]], numbers: int, accept_encoding: str | None
                       ) -> tuple[bytes, dict[str, str]]:
        """The answer's body and headers, compressed when the client asks. A small answer is encoded and
        compressed on the event loop; a large one in a worker thread (gzip of a large body would hold every
        other request on this loop, health probes included, for its whole duration)."""
        encoding = response_encoding(accept_encoding)
        if numbers > ENCODE_ON_LOOP_NUMBERS:
            return await store.run_blocking(_encode_and_compress, encode, encoding)
        payload, headers = encode()
        if encoding is not None and len(payload) > COMPRESS_ON_LOOP_BYTES:
            return await store.run_blocking(compressed, payload, headers, encoding)
        return compressed(payload, headers, encoding)

    infer_doc: dict[str, Any] = {
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

    # hot routes: served from a RequestView and the path (see service/api/fast_path.py, service/api/direct.py)
    async def infer_view(request: RequestView, model: str) -> Response:
        return await _infer(model, None, request)

    async def infer_version_view(request: RequestView, model: str, version: str) -> Response:
        return await _infer(model, version, request)

    @router.post("/models/{model}/infer", summary="Inference (JSON or binary tensor extension)", **infer_doc)
    async def infer(model: str, request: Request) -> Response:
        return await infer_view(AsgiRequest(request), model)

    @router.post("/models/{model}/versions/{version}/infer", summary="Inference on a version", **infer_doc)
    async def infer_version(model: str, version: str, request: Request) -> Response:
        return await infer_version_view(AsgiRequest(request), model, version)

    @router.get("/models/{model}/stats", response_model=ModelStatisticsResponse, summary="Model statistics")
    async def stats(model: str) -> ModelStatisticsResponse:
        return statistics(model)

    @router.get("/models/{model}/versions/{version}/stats", response_model=ModelStatisticsResponse,
                summary="Model version statistics")
    async def version_stats(model: str, version: str) -> ModelStatisticsResponse:
        return statistics(model, _version(version))

    @router.post("/repository/index", response_model=list[RepositoryIndexEntry], summary="Repository index",
                 openapi_extra={"requestBody": {"required": False, "content": {
                     "application/json": {"schema": RepositoryIndexRequest.model_json_schema()}}}},
                 responses={400: {}, 413: {}})
    async def repository_index(request: Request) -> list[RepositoryIndexEntry]:
        body = await read_small_body(request, INDEX_BODY_BYTES)
        ready_only = False
        if body.strip():
            try:
                ready_only = RepositoryIndexRequest.model_validate_json(body).ready
            except ValidationError as exc:
                raise InvalidInput(validation_message(exc.errors(), prefix=("body",))) from None
        entries = [RepositoryIndexEntry(**e) for e in index_entries(store)]
        if ready_only:
            entries = [e for e in entries if e.state == "READY"]
        return entries

    @router.post("/repository/models/{model}/load", response_model=ModelInfo,
                 summary="Load or reload a model (API key)", responses={400: {}, 401: {}, 404: {}})
    async def load(model: str, request: Request) -> ModelInfo:
        check_key(request, settings.api_key, required=True, what="repository control")
        await loader.load(model)
        return model_info(store, model)

    @router.post("/repository/models/{model}/unload", response_model=ModelInfo,
                 summary="Unload a model after draining it (API key)", responses={401: {}, 404: {}})
    async def unload(model: str, request: Request) -> ModelInfo:
        check_key(request, settings.api_key, required=True, what="repository control")
        await loader.unload(model)
        return model_info(store, model)

    app.include_router(router)
    return hot_routes(router, {infer: infer_view, infer_version: infer_version_view})
