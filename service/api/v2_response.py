"""Open Inference Protocol v2: encoding an infer response, from numpy arrays to body bytes and headers.

Why a module of its own: the response side has its own job and its own cache (the JSON header of an
all-binary response, `_binary_response_header`, built once per shape), and only the server's values go
through it; client input reaches it only as the request's id (at most `MAX_ID_CHARS`) and output
parameters, checked with the same rules as the decoder's (service/api/v2_wire.py). It covers Triton's binary
tensor data (outputs), the classification extension and response compression (the router encodes and
compresses a large answer in a worker thread: `ENCODE_ON_LOOP_NUMBERS`, `COMPRESS_ON_LOOP_BYTES`);
service/api/v2_codec.py decodes the request.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from service.api.v2_wire import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH_HEADER,
    JSON_CONTENT_TYPE,
    V2_TO_NUMPY,
    InferenceRequest,
    InferenceResponse,
    ResponseOutput,
    bool_param,
    int_param,
    numpy_to_v2,
)
from service.errors import V2ProtocolError
from service.postprocess import top_k_indices


def _encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in arr.ravel(order="C").tolist():
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _json_data(arr: np.ndarray, datatype: str) -> list[Any]:
    flat = arr.ravel(order="C").tolist()
    if datatype == "BYTES":
        return [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in flat]
    return flat


def classify(
    scores: np.ndarray, count: int, labels: Sequence[str] | None = None, *, batched: bool = True
) -> np.ndarray:
    """Triton's classification output: top-`count` per batch item as b"<value>:<index>[:<label>]"."""
    rows = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    order = top_k_indices(rows, count)
    k = order.shape[1]
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    for r, idxs in enumerate(order):
        for c, idx in enumerate(idxs.tolist()):
            text = f"{float(rows[r, idx]):f}:{idx}"
            if labels is not None and idx < len(labels):
                text += f":{labels[idx]}"
            out[r, c] = text.encode("utf-8")
    return out if batched else out.reshape(k)


class _OutputHeader(NamedTuple):
    """What the response's JSON header says of one output (`size` when binary, else `data`)."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    size: int | None
    data: list[Any] | None


def _response_header(
    model_name: str, version: str, request_id: str | None, described: Sequence[_OutputHeader]
) -> bytes:
    # built from values the server produced (not client input): constructed without re-validation
    out_tensors = [
        ResponseOutput.model_construct(name=o.name, shape=list(o.shape), datatype=o.datatype,
                                       parameters={"binary_data_size": o.size})
        if o.size is not None else
        ResponseOutput.model_construct(name=o.name, shape=list(o.shape), datatype=o.datatype, data=o.data)
        for o in described
    ]
    response = InferenceResponse.model_construct(model_name=model_name, model_version=version, id=request_id,
                                                 outputs=out_tensors)
    return response.model_dump_json(exclude_none=True).encode("utf-8")


@functools.lru_cache(maxsize=256)
def _binary_response_header(model_name: str, version: str, described: tuple[_OutputHeader, ...]) -> bytes:
    """`_response_header` of a response without an id whose outputs are all binary, built once per shape."""
    return _response_header(model_name, version, None, described)


def _wanted_outputs(request: InferenceRequest, outputs: Mapping[str, np.ndarray]) -> list[tuple[str, dict[str, Any]]]:
    """The outputs to return with their parameters: those the request names (each once), else every one."""
    if not request.outputs:
        return [(name, {}) for name in outputs]
    wanted = [(o.name, o.parameters or {}) for o in request.outputs]
    names = [n for n, _ in wanted]
    for name in names:
        if name not in outputs:
            raise V2ProtocolError(f"unexpected output {name!r}; the model's outputs are {sorted(outputs)}")
        if names.count(name) > 1:
            raise V2ProtocolError(f"output {name!r} is requested more than once")
    return wanted


def encode_infer_response(
    model_name: str,
    version: str,
    outputs: Mapping[str, np.ndarray],
    request: InferenceRequest,
    *,
    binary_default: bool = False,
    labels: Sequence[str] | None = None,
    batched: bool = True,
) -> tuple[bytes, dict[str, str]]:
    """Encode model outputs as the response to `request`: (body, headers).

    Without `request.outputs` every output is returned, binary iff the request-level
    `binary_data_output` parameter (default `binary_default`) says so; with it, exactly the named
    outputs in that order, each binary per its own `binary_data` parameter (falling back to the
    request level). `classification: k` replaces an output by its top-k strings (`labels` name the
    indices; `batched` says whether dimension 0 is the batch). Binary data follows the JSON header
    and `Inference-Header-Content-Length` gives the header's length.
    """
    req_params = request.parameters or {}
    default_binary = bool_param(req_params, "binary_data_output", "request", binary_default)
    wanted = _wanted_outputs(request, outputs)
    described: list[_OutputHeader] = []
    chunks: list[bytes] = []
    for name, params in wanted:
        where = f"output {name!r}"
        if "shared_memory_region" in params:
            raise V2ProtocolError(f"{where}: shared memory is not supported")
        binary = bool_param(params, "binary_data", where, default_binary)
        arr = np.asarray(outputs[name])
        count = int_param(params, "classification", where, 0)
        if count:
            arr = classify(arr, count, labels, batched=batched)
        datatype = numpy_to_v2(arr.dtype)
        if binary:
            raw = _encode_bytes_elements(arr) if datatype == "BYTES" else np.ascontiguousarray(
                arr, dtype=V2_TO_NUMPY[datatype]
            ).tobytes()
            chunks.append(raw)
            described.append(_OutputHeader(name, arr.shape, datatype, len(raw), None))
        else:
            described.append(_OutputHeader(name, arr.shape, datatype, None, _json_data(arr, datatype)))

    if request.id is None and len(chunks) == len(described):
        # every output binary: the header depends only on these few values, and repeats request after request
        header = _binary_response_header(model_name, version, tuple(described))
    else:
        header = _response_header(model_name, version, request.id, described)
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *chunks]), headers


class RawOutput(NamedTuple):
    """One output of an answer as raw little-endian bytes (gRPC's `raw_output_contents`; BYTES length-prefixed)."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    raw: bytes


def raw_outputs(
    outputs: Mapping[str, np.ndarray], request: InferenceRequest, *, labels: Sequence[str] | None = None,
    batched: bool = True,
) -> list[RawOutput]:
    """The outputs `request` asks for (each once, in its order; every one when it names none), classification
    applied, as raw bytes: `encode_infer_response`'s choice and checks for a protocol whose tensors are always
    binary (gRPC)."""
    out: list[RawOutput] = []
    for name, params in _wanted_outputs(request, outputs):
        where = f"output {name!r}"
        if "shared_memory_region" in params:
            raise V2ProtocolError(f"{where}: shared memory is not supported")
        arr = np.asarray(outputs[name])
        count = int_param(params, "classification", where, 0)
        if count:
            arr = classify(arr, count, labels, batched=batched)
        datatype = numpy_to_v2(arr.dtype)
        raw = _encode_bytes_elements(arr) if datatype == "BYTES" else np.ascontiguousarray(
            arr, dtype=V2_TO_NUMPY[datatype]).tobytes()
        out.append(RawOutput(name, arr.shape, datatype, raw))
    return out


#: a response body up to this many bytes is compressed on the event loop: that costs about what a hop to a worker
#: thread costs the loop, and gzip's cost per byte grows with the body; a larger one is compressed in a thread
COMPRESS_ON_LOOP_BYTES = 4096
#: outputs of up to this many numbers are encoded on the event loop; JSON costs per number, so more go to a thread
ENCODE_ON_LOOP_NUMBERS = 4096


def response_encoding(accept_encoding: str | None) -> str | None:
    """The content coding a client accepts (gzip, else deflate, with q > 0); None: send the body as it is."""
    if not accept_encoding:
        return None
    accepted: dict[str, float] = {}
    for part in accept_encoding.split(","):
        token, _, q = part.strip().partition(";")
        try:
            weight = float(q.strip()[2:]) if q.strip().startswith("q=") else 1.0
        except ValueError:
            weight = 0.0
        if token:
            accepted[token.strip().lower()] = weight
    for encoding in ("gzip", "deflate"):
        if accepted.get(encoding, 0.0) > 0.0:
            return encoding
    return None


def compressed(body: bytes, headers: dict[str, str], encoding: str | None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) in `encoding` (from `response_encoding`; None leaves them as they are).

    `Inference-Header-Content-Length` keeps the uncompressed JSON length: the client inflates first."""
    if encoding is None:
        return body, headers
    data = gzip.compress(body, compresslevel=6) if encoding == "gzip" else zlib.compress(body, 6)
    return data, {**headers, "Content-Encoding": encoding}


def encode_content_encoding(
    body: bytes, headers: dict[str, str], accept_encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    """Compress a response when the client asks (tritonclient's `response_compression_algorithm`)."""
    return compressed(body, headers, response_encoding(accept_encoding))


__all__ = [
    "COMPRESS_ON_LOOP_BYTES", "ENCODE_ON_LOOP_NUMBERS", "RawOutput", "classify", "compressed",
    "encode_content_encoding", "encode_infer_response", "raw_outputs", "response_encoding",
]
