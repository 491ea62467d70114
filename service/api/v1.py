"""/v1: the service's own REST API (classify, compare, models). A thin layer over the pipeline.

An image arrives as a multipart field `image`, as a raw `image/*` (or octet-stream) body, or as JSON
`{"image": "<base64>"}`; the pipeline (service/pipeline.py) does the rest.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from typing import Any

from fastapi import Query, Request, Response
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from service.api.common import (
    cancel_on_disconnect,
    check_key,
    model_label,
    parse_query,
    query_parameters_doc,
    server_timing,
    track,
)
from service.api.models import ModelInfo, model_info, model_infos
from service.api.request_view import AsgiRequest, RequestView, parse_multipart
from service.api.routes import Route, route
from service.catalog import Catalog
from service.errors import InvalidInput, ServiceError, UnsupportedMediaType
from service.manifest import Evaluation
from service.pipeline import Pipeline
from service.schemas import ClassifyResult, Prediction, Timings

MAX_INT = 2**63 - 1  # integer parameters are 64-bit; larger ones are a 400, never arithmetic

IMAGE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart field `image`, a raw image body, or JSON with base64",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "byte", "description": "base64 image"}},
                    "required": ["image"],
                }
            },
        },
    }
}


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ClassifyQuery(BaseModel):
    """Query parameters of POST /v1/models/{model}/classify."""

    top_k: int = Field(5, ge=1, le=MAX_INT, description="how many classes to return")
    deadline_ms: float | None = Field(None, gt=0, description="give up (504) if not computed by then")
    version: int | None = Field(None, ge=1, le=MAX_INT, description="model version (default: highest loaded)")


class CompareEntry(BaseModel):
    model: str
    status: int = Field(description="HTTP status this model's part would have had")
    version: int | None = None
    predictions: list[Prediction] | None = None
    timings: Timings | None = None
    error: str | None = None
    evaluation: Evaluation | None = Field(None, description="the model's held-out accuracy (from its manifest)")


class CompareResponse(BaseModel):
    results: list[CompareEntry]
    top1_agree: bool | None = Field(description="whether every model that answered has the same top-1 label")
    total_ms: float
    same_dataset: bool | None = Field(
        None, description="whether every evaluated model was evaluated on the same dataset identity: accuracies "
                          "are comparable only then (None when fewer than two models carry an evaluation)")


# the one JSON shape accepted, recognised without building the document: a large body of any other
# shape (a 30 MB list of numbers) would cost seconds of GIL-holding parsing and hundreds of MB
_JSON_IMAGE_START = re.compile(rb'\s*\{\s*"image"\s*:\s*"')
_JSON_IMAGE_END = re.compile(rb'"\s*\}\s*\Z')
SMALL_JSON_BYTES = 64 * 1024
LARGE_BODY_BYTES = 256 * 1024


def image_from_json(body: bytes) -> bytes:
    """The image of a JSON body `{"image": "<base64 or data: URL>"}`.

    Only a small body (SMALL_JSON_BYTES) is parsed as a JSON document (other keys are then
    ignored); a larger one must be exactly that object, matched as bytes, and is refused otherwise
    without being parsed."""
    text = _exact_image_string(body)
    if text is None:
        if len(body) > SMALL_JSON_BYTES:
            raise InvalidInput('JSON body must be {"image": "<base64>"} (a large body must be exactly that '
                               "object, with no escapes in the string)")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidInput("body is not valid JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise InvalidInput('JSON body must be {"image": "<base64>"}')
        text = payload["image"]
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("field 'image' is not valid base64") from None


def _exact_image_string(body: bytes) -> str | None:
    """The string of a body that is exactly {"image": "<no escapes>"}, found with memchr-speed scans."""
    start = _JSON_IMAGE_START.match(body)
    if start is None:
        return None
    end = body.find(b'"', start.end())
    if end < 0 or body.find(b"\\", start.end(), end) >= 0 or _JSON_IMAGE_END.match(body, end) is None:
        return None
    return body[start.end():end].decode("ascii", errors="replace")


#: multipart bodies up to this size are read whole and tried as one file part (`single_file_part`)
SMALL_MULTIPART_BYTES = 1 << 20
_PART_HEADERS = (b"content-disposition", b"content-type")


@functools.lru_cache(maxsize=256)
def _multipart_boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart Content-Type (None when absent, or with a charset: the full parser's case)."""
    _, params = parse_options_header(content_type)
    return None if b"charset" in params else params.get(b"boundary")


_CACHED_DISPOSITION_BYTES = 256


@functools.lru_cache(maxsize=256)
def _is_image_file_disposition(disposition: bytes) -> bool:
    """Whether a part's Content-Disposition names the field "image" and gives a filename (a client sends
    the same one every time: read once)."""
    _, options = parse_options_header(disposition)
    return options.get(b"name") == b"image" and b"filename" in options


def single_file_part(body: bytes, content_type: str) -> bytes | None:
    """The file of a multipart body that is exactly one part, a file named "image"; None for any other body.

    The shape every client sends for one upload, recognised with a few bytes searches; whatever else
    (more parts, fields, other names or headers, a preamble, an epilogue, bare LF line ends, data that
    holds the delimiter's bytes) returns
    None and goes to the full multipart parser, which gives such bodies their answer. Headers are read
    as the full parser reads them (python-multipart's `parse_options_header`)."""
    boundary = _multipart_boundary(content_type)
    if not boundary:
        return None
    delimiter = b"--" + boundary
    start = len(delimiter) + 2
    if not body.startswith(delimiter + b"\r\n"):
        return None
    head_end = body.find(b"\r\n\r\n", start - 2)
    if head_end < 0:
        return None
    disposition = None
    for line in body[start:head_end].split(b"\r\n") if head_end >= start else ():
        name, colon, value = line.partition(b":")
        name = name.lower()
        if not colon or name not in _PART_HEADERS or (name == b"content-disposition" and disposition is not None):
            return None
        if name == b"content-disposition":
            disposition = value.strip(b" \t")
    if disposition is None:
        return None
    if not (_is_image_file_disposition if len(disposition) <= _CACHED_DISPOSITION_BYTES
            else _is_image_file_disposition.__wrapped__)(disposition):
        return None
    end = body.find(b"\r\n" + delimiter, head_end + 4)
    if end < 0 or end != body.rfind(b"\r\n" + delimiter) or body[end + 2 + len(delimiter):] not in (b"--", b"--\r\n"):
        return None  # not exactly one closing delimiter, at the very end
    return body[head_end + 4:end]


async def read_image(request: RequestView, store: Catalog) -> bytes:
    """The image bytes of a request, whichever of the three accepted forms it uses."""
    content_type = request.headers.get("content-type", "")
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= SMALL_MULTIPART_BYTES:
            image = single_file_part(await request.body(), content_type)
            if image is not None:
                return image
        try:
            form = await parse_multipart(request, max_files=1, max_fields=16)
        except (ServiceError, ClientDisconnect):  # a client gone mid-upload is a 499, not a malformed body
            raise
        except Exception:  # noqa: BLE001 - starlette/multipart parse errors
            raise InvalidInput("malformed multipart body") from None
        try:
            item = form.get("image")
            if item is None or isinstance(item, str):
                raise InvalidInput("multipart field 'image' must hold an image file")
            return await item.read()
        finally:
            await form.close()
    raw = ctype.startswith("image/") or ctype == "application/octet-stream"
    if not raw and not (ctype == "application/json" or ctype.endswith("+json")):  # refused before reading the body
        if not ctype:
            raise UnsupportedMediaType("missing Content-Type (send multipart/form-data, image/*, or application/json)")
        raise UnsupportedMediaType(f"unsupported Content-Type {ctype!r} (send multipart/form-data, image/*, or JSON)")
    body = await request.body()
    if raw:
        return body
    return await store.run_blocking(image_from_json, body) if len(body) > LARGE_BODY_BYTES else image_from_json(body)


class V1Endpoints:
    """/v1: the service's own REST API over the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.catalog, self.settings, self.metrics = pipeline.store, pipeline.settings, pipeline.metrics

    def routes(self) -> list[Route]:
        image_errors: dict[int | str, dict[str, Any]] = {400: {}, 404: {}, 413: {}, 415: {}, 503: {}}
        return [
            route("GET", "/models", self.list_models, response_model=ModelsResponse,
                  summary="Every model: variants, costs, state, provider"),
            route("GET", "/models/{model}", self.get_model, response_model=ModelInfo, summary="One model",
                  responses={404: {}}),
            route("POST", "/models/{model}/classify", self.classify, hot=self.classify_view,
                  response_model=ClassifyResult,
                  summary="Classify one image: top-k labels with queue / preprocess / compute timings",
                  openapi_extra={**IMAGE_BODY_DOC, "parameters": query_parameters_doc(ClassifyQuery)},
                  responses={**image_errors, 504: {}}),
            route("POST", "/compare", self.compare, response_model=CompareResponse,
                  summary="One image through several models concurrently; per-model top-k, timings and top-1 "
                          "agreement",
                  openapi_extra=IMAGE_BODY_DOC, responses=dict(image_errors)),
        ]

    async def list_models(self) -> ModelsResponse:
        return ModelsResponse(models=model_infos(self.catalog))

    async def get_model(self, model: str) -> ModelInfo:
        return model_info(self.catalog, model)

    async def classify(self, model: str, request: Request) -> Response:
        return await self.classify_view(AsgiRequest(request), model)

    async def classify_view(self, request: RequestView, model: str) -> Response:
        """A hot route: served from a RequestView and the path (service/api/fast_path.py)."""
        pipeline, catalog = self.pipeline, self.catalog
        async with track(self.metrics, model_label(model, catalog.model_names()), "v1_classify"):
            query = parse_query(ClassifyQuery, request)
            check_key(request, self.settings.inference_api_key, required=False, what="inference")
            with pipeline.accept(model, query.version) as lv:  # 404 / 503 before reading a body; then answered
                image = await read_image(request, catalog)
                result = await cancel_on_disconnect(
                    request,
                    pipeline.classify(lv, image, query.top_k, query.deadline_ms, pinned=query.version is not None),
                )
            return Response(result.model_dump_json(), media_type="application/json",
                            headers={"Server-Timing": server_timing(result.timings)})

    async def compare(
        self,
        request: Request,
        models: str | None = Query(None, description="comma-separated model names (default: every ready model)"),
        top_k: int = Query(5, ge=1, le=MAX_INT),
        deadline_ms: float | None = Query(None, gt=0),
    ) -> CompareResponse:
        catalog = self.catalog
        async with track(self.metrics, "_compare", "v1_compare"):
            start = time.perf_counter()
            check_key(request, self.settings.inference_api_key, required=False, what="inference")
            names = None
            if models is not None:
                names = list(dict.fromkeys(n.strip() for n in models.split(",") if n.strip()))
                if not names:
                    raise InvalidInput("models must name at least one model")
                for n in names:
                    catalog.require(n)
            with catalog.accepting():
                view = AsgiRequest(request)
                image = await read_image(view, catalog)
                results = await cancel_on_disconnect(view, self.pipeline.compare(image, names, top_k, deadline_ms))
            return compare_response(catalog, results, start)


def compare_response(catalog: Catalog, results: list[tuple[str, ClassifyResult | ServiceError]], start: float
                     ) -> CompareResponse:
    """The models' answers side by side; the one error when none could answer, all for the same reason."""
    entries = []
    for name, r in results:
        evaluation = catalog.evaluation(name)
        if isinstance(r, ClassifyResult):
            entries.append(CompareEntry(model=name, status=200, version=r.version, predictions=r.predictions,
                                        timings=r.timings, evaluation=evaluation))
        else:
            entries.append(CompareEntry(model=name, status=r.status, error=r.message, evaluation=evaluation))
    datasets = [e.evaluation.dataset for e in entries if e.evaluation is not None]
    tops = {e.predictions[0].label for e in entries if e.predictions}
    answered = sum(1 for e in entries if e.predictions)
    if answered == 0 and all(e.status == entries[0].status for e in entries):
        # nobody could answer for the same reason (e.g. a corrupt image): that is the answer
        raise next(r for _, r in results if isinstance(r, ServiceError))
    return CompareResponse(
        results=entries,
        top1_agree=(len(tops) == 1) if answered >= 1 else None,
        total_ms=(time.perf_counter() - start) * 1000,
        same_dataset=(None not in datasets and len({d.key for d in datasets if d}) == 1)
        if len(datasets) >= 2 else None,
    )
