"""The v2 infer endpoint's work once a request is admitted: read, parse (off the loop when large), infer, encode.

The request is decoded by the pure codec (service/api/v2_codec.py) and answered by the pure encoder
(service/api/v2_response.py); this class bounds what a JSON body may cost before parsing it and decides
what runs on the event loop and what in the worker pool.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

from fastapi.responses import Response

from service.api.common import cancel_on_disconnect, check_key, model_label, track
from service.api.request_view import RequestView
from service.api.v2_codec import decode_content_encoding, parse_header_length, parse_infer_request, request_timeout_s
from service.api.v2_response import (
    COMPRESS_ON_LOOP_BYTES,
    ENCODE_ON_LOOP_NUMBERS,
    compressed,
    encode_infer_response,
    response_encoding,
)
from service.api.v2_wire import HEADER_LENGTH_HEADER, TensorSpec, input_specs
from service.catalog import LoadedVersion
from service.errors import ModelNotFound, PayloadTooLarge
from service.pipeline import Pipeline
from service.repository import ModelEntry, parse_version

LARGE_BODY_BYTES = 256 * 1024
JSON_BYTES_PER_NUMBER = 32
JSON_ENVELOPE_BYTES = 64 * 1024
#: separators a legal request may hold beside one per number (shape, parameters, several inputs/outputs)
JSON_ENVELOPE_COMMAS = 4096


def _encode_and_compress(
    encode: Callable[[], tuple[bytes, dict[str, str]]], encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    """`encode()` compressed in `encoding`: one hop to a worker thread for both."""
    return compressed(*encode(), encoding)


def wire_version(text: str | None) -> int | None:
    """A version from a URL (404 for one that cannot be a version)."""
    if text is None:
        return None
    try:
        return parse_version(text)
    except ValueError:
        raise ModelNotFound(f"no version {text!r}") from None


def check_json_size(model: str, body: bytes, json_bytes: int, numbers: int) -> None:
    """413 for a JSON part (the whole body, or the header before binary tensors; after inflating) no legal
    request of `numbers` numbers can need, before pydantic builds millions of Python objects (it holds the GIL,
    stalling every other request): a JSON tensor is ~10-25 bytes per number."""
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


class V2Infer:
    """POST /v2/models/{m}[/versions/{v}]/infer over the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.catalog, self.settings, self.metrics = pipeline.store, pipeline.settings, pipeline.metrics
        self._inputs: dict[str, tuple[ModelEntry, dict[str, TensorSpec], int | None]] = {}

    async def serve(self, request: RequestView, model: str, version: str | None) -> Response:
        async with track(self.metrics, model_label(model, self.catalog.model_names()), "v2_infer"):
            start = time.monotonic()
            check_key(request, self.settings.inference_api_key, required=False, what="inference")
            v = wire_version(version)
            with self.pipeline.accept(model, v) as lv:  # 404 / 503 (not ready, queue full) before reading
                return await self._accepted(lv, v is not None, request, start)

    def inputs_of(self, model: str, entry: ModelEntry) -> tuple[dict[str, TensorSpec], int | None]:
        """The model's input specs and numbers per batch item (None when a dimension is variable), per entry."""
        cached = self._inputs.get(model)
        if cached is None or cached[0] is not entry:  # first request, or the model was reloaded
            specs = input_specs(entry.config)
            fixed = all(d >= 0 for spec in specs.values() for d in spec.dims)
            numbers = sum(math.prod(spec.dims) for spec in specs.values()) if fixed else None
            cached = self._inputs[model] = (entry, specs, numbers)
        return cached[1], cached[2]

    async def _accepted(self, lv: LoadedVersion, pinned: bool, request: RequestView, start: float) -> Response:
        """The body of an admitted v2 request: read, parse (off the loop when large), infer, encode."""
        pipeline, catalog = self.pipeline, self.catalog
        model, manifest = lv.model, lv.entry.manifest
        max_batch = pipeline.max_images(lv)
        body = await request.body()
        encoding = request.headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() != "identity":
            # a few KB can inflate to the body limit: not on the event loop
            body = await catalog.run_blocking(functools.partial(
                decode_content_encoding, body, encoding, max_size=self.settings.max_body_bytes))
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH_HEADER))
        specs, image_numbers = self.inputs_of(model, lv.entry)
        json_bytes = len(body) if header_length is None else min(header_length, len(body))
        if image_numbers is not None:
            check_json_size(model, body, json_bytes, max_batch * image_numbers)
        parse = functools.partial(parse_infer_request, body, header_length, expected_inputs=specs,
                                  max_batch_size=max_batch)
        # a large JSON tensor takes a while to parse: not on the event loop
        parsed, arrays = await catalog.run_blocking(parse) if json_bytes > LARGE_BODY_BYTES else parse()
        timeout = request_timeout_s(parsed)
        deadline = pipeline.deadline(timeout * 1000 if timeout else None, start)
        pixels = arrays[manifest.input_name]
        out = await cancel_on_disconnect(request, pipeline.run(lv, pixels, deadline, pinned=pinned))
        served = out.served.entry.manifest  # the version that computed it (a newer one after a swap)
        encode = functools.partial(
            encode_infer_response, model, str(out.version), {served.output_name: out.outputs}, parsed,
            labels=served.labels,
        )
        payload, headers = await self._encoded(encode, out.outputs.size, request.headers.get("accept-encoding"))
        content_type = headers.pop("Content-Type", "application/json")
        return Response(content=payload, media_type=content_type, headers=headers)

    async def _encoded(self, encode: Callable[[], tuple[bytes, dict[str, str]]], numbers: int,
                       accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
        """The answer's body and headers, compressed when the client asks. A small answer is encoded and
        compressed on the event loop; a large one in a worker thread (gzip of a large body would hold every
        other request on this loop, health probes included, for its whole duration)."""
        encoding = response_encoding(accept_encoding)
        if numbers > ENCODE_ON_LOOP_NUMBERS:
            return await self.catalog.run_blocking(_encode_and_compress, encode, encoding)
        payload, headers = encode()
        if encoding is not None and len(payload) > COMPRESS_ON_LOOP_BYTES:
            return await self.catalog.run_blocking(compressed, payload, headers, encoding)
        return compressed(payload, headers, encoding)
