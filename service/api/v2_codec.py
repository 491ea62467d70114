"""Open Inference Protocol v2 (KServe / Triton REST) data model and its binary tensor extension.

Why a module of its own: the wire format is what `tritonclient.http` speaks, byte for byte, and it
is easiest to get right (and to test against the real client) as pure functions from bytes to
numpy arrays and back, with no routing, model store or batcher in sight. The /v2 router calls these
functions; everything here raises `V2ProtocolError` (service/errors.py: an `InvalidInput`, HTTP 400, and a
`ValueError`) with a message meant for the client; an inflated body over the limit is a `PayloadTooLarge`
(413) and an unknown Content-Encoding an `UnsupportedMediaType` (415).

Specs followed:
- KServe Open Inference Protocol v2, REST: request/response JSON, tensor data flat or nested in
  row-major order, `{"error": ...}` bodies.
- Triton's binary tensor data extension: the JSON header is followed by raw little-endian tensor
  bytes; the `Inference-Header-Content-Length` header gives the JSON length, each input's
  `parameters.binary_data_size` its byte count (consecutive, in input order); outputs are returned
  as binary when the request asks (`outputs[].parameters.binary_data`, else the request-level
  `parameters.binary_data_output`). BOOL is one byte per element, BYTES is a 4-byte little-endian
  length before each element.
- Triton's classification extension: `outputs[].parameters.classification = k` returns, per batch
  item, the top-k as BYTES strings `"<value>:<index>[:<label>]"`.
Metadata, the /config JSON and statistics live beside it in service/api/v2_meta.py.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Mapping, Sequence
from math import prod
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from service.errors import PayloadTooLarge, UnsupportedMediaType, V2ProtocolError, validation_message
from service.postprocess import top_k_indices
from service.model_config import ModelConfig

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


# --- datatypes ---------------------------------------------------------------------------------

# v2 datatype -> little-endian numpy dtype (BYTES elements are Python `bytes` in an object array).
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# Triton model config `DataType` enum names -> v2 datatype names (TYPE_STRING travels as BYTES).
CONFIG_TO_V2: dict[str, str] = {f"TYPE_{k}": k for k in V2_TO_NUMPY if k != "BYTES"} | {
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}


def v2_to_numpy(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype (BYTES -> object)."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise V2ProtocolError(f"unsupported datatype {datatype!r}; supported: {sorted(V2_TO_NUMPY)}") from None


def numpy_to_v2(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name of a numpy dtype (object and bytes/str arrays are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    for name, np_dtype in V2_TO_NUMPY.items():
        if name != "BYTES" and np_dtype == dtype.newbyteorder("<"):
            return name
    raise V2ProtocolError(f"numpy dtype {dtype} has no v2 datatype")


class TensorSpec(NamedTuple):
    """What a model declares for one tensor: v2 datatype and dims without the batch dimension (-1 = any)."""

    datatype: str
    dims: tuple[int, ...]


def _specs(tensors: Sequence[Any]) -> dict[str, TensorSpec]:
    return {t.name: TensorSpec(CONFIG_TO_V2[t.data_type], tuple(t.dims)) for t in tensors}


def input_specs(cfg: ModelConfig) -> dict[str, TensorSpec]:
    """The model's inputs as `parse_infer_request` expects them."""
    return _specs(cfg.input)


def output_specs(cfg: ModelConfig) -> dict[str, TensorSpec]:
    return _specs(cfg.output)


# --- pydantic models of the protocol -----------------------------------------------------------


class WireModel(BaseModel):
    """Base of every v2 wire model: unknown fields are ignored, as Triton does."""

    model_config = ConfigDict(extra="ignore")


class RequestInput(WireModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(WireModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(WireModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(WireModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(WireModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


# --- request decoding --------------------------------------------------------------------------


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header as an int (None when absent)."""
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must be an integer, got {value!r}") from None
    if length < 0:
        raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must not be negative, got {length}")
    return length


def decode_content_encoding(body: bytes, content_encoding: str | None, *, max_size: int) -> bytes:
    """Undo gzip/deflate request compression (tritonclient's `request_compression_algorithm`),
    never inflating past `max_size` bytes (a compressed body can be a bomb)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        candidates = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":  # zlib-wrapped per RFC 9110 (what tritonclient sends); raw deflate also seen
        candidates = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {content_encoding!r} (use gzip or deflate)")
    for wbits in candidates:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, max_size + 1)
        except zlib.error:
            continue
        if len(out) > max_size:
            raise PayloadTooLarge(f"decompressed request body exceeds {max_size} bytes")
        if not inflater.eof:
            raise V2ProtocolError(f"truncated {encoding} request body")
        return out
    raise V2ProtocolError(f"request body is not valid {encoding} data")


# Triton's integer parameters are 64-bit; a larger one (10**400) is refused, not computed with
MAX_INT_PARAM = 2**63 - 1
# error messages quote at most this much of what the client sent (a shape of a million numbers)
ECHO_CHARS = 120


def echo(value: object) -> str:
    """`repr(value)` cut to ECHO_CHARS characters, for error messages."""
    text = repr(value) if not isinstance(value, list) or len(value) <= 64 else repr(value[:64])[:-1] + ", ...]"
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def _int_param(params: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT_PARAM:
        raise V2ProtocolError(
            f"{where}: parameter {key!r} must be a non-negative integer up to {MAX_INT_PARAM}, got {echo(value)}"
        )
    return value


def _bool_param(params: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise V2ProtocolError(f"{where}: parameter {key!r} must be true or false, got {echo(value)}")
    return value


_MAX_DIM = 2**31 - 1


def _check_shape(name: str, shape: list[int], dims: Sequence[int], max_batch_size: int) -> None:
    shown = echo(shape)
    if any(d < 0 for d in shape):
        raise V2ProtocolError(f"input {name!r}: shape {shown} has a negative dimension")
    if any(d > _MAX_DIM for d in shape):
        raise V2ProtocolError(f"input {name!r}: shape {shown} has a dimension above {_MAX_DIM}")
    want = "[" + ", ".join(["batch"] * (max_batch_size > 0) + [str(d) if d >= 0 else "*" for d in dims]) + "]"
    rank = len(dims) + (1 if max_batch_size > 0 else 0)
    if len(shape) != rank:
        raise V2ProtocolError(f"input {name!r}: shape {shown} does not match the model's {want}")
    if max_batch_size > 0:
        if not 1 <= shape[0] <= max_batch_size:
            raise V2ProtocolError(
                f"input {name!r}: batch size {shape[0]} is outside 1..{max_batch_size} (the model's max_batch_size)"
            )
        shape = shape[1:]
    for got, expected in zip(shape, dims):
        if expected >= 0 and got != expected:
            raise V2ProtocolError(f"input {name!r}: shape does not match the model's {want}")


def _decode_bytes_elements(raw: memoryview, count: int, name: str) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2ProtocolError(f"input {name!r}: BYTES data ends inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise V2ProtocolError(f"input {name!r}: BYTES element of {length} bytes runs past binary_data_size")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise V2ProtocolError(f"input {name!r}: {len(items)} BYTES elements for a shape of {count} elements")
    out = np.empty(count, dtype=np.object_)
    out[:] = items
    return out


def _decode_binary(raw: memoryview, spec_dtype: str, shape: list[int], name: str) -> np.ndarray:
    count = prod(shape)
    if spec_dtype == "BYTES":
        return _decode_bytes_elements(raw, count, name).reshape(shape)
    dtype = V2_TO_NUMPY[spec_dtype]
    if len(raw) != count * dtype.itemsize:
        raise V2ProtocolError(
            f"input {name!r}: binary_data_size is {len(raw)} bytes but shape {echo(shape)} of {spec_dtype} "
            f"needs {count * dtype.itemsize}"
        )
    if spec_dtype == "BOOL" and count and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise V2ProtocolError(f"input {name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_json(data: list[Any], spec_dtype: str, shape: list[int], name: str) -> np.ndarray:
    count = prod(shape)
    try:
        arr = np.asarray(data)
    except ValueError:
        raise V2ProtocolError(f"input {name!r}: data is a ragged nested list") from None
    if arr.size != count:
        raise V2ProtocolError(f"input {name!r}: data has {arr.size} elements but shape {echo(shape)} needs {count}")
    if count == 0:
        return np.empty(shape, dtype=V2_TO_NUMPY[spec_dtype])
    kind = arr.dtype.kind
    if spec_dtype == "BYTES":
        if kind != "U":
            raise V2ProtocolError(f"input {name!r}: BYTES data must be strings")
        out = np.empty(count, dtype=np.object_)
        out[:] = [s.encode("utf-8") for s in arr.ravel().tolist()]
        return out.reshape(shape)
    dtype = V2_TO_NUMPY[spec_dtype]
    if spec_dtype == "BOOL":
        if kind != "b":
            raise V2ProtocolError(f"input {name!r}: BOOL data must be true/false")
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise V2ProtocolError(f"input {name!r}: {spec_dtype} data must be integers")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise V2ProtocolError(f"input {name!r}: a value is out of range for {spec_dtype}")
    else:
        if kind not in "iuf":
            raise V2ProtocolError(f"input {name!r}: {spec_dtype} data must be numbers")
        if not np.all(np.abs(arr) <= np.finfo(dtype).max):
            raise V2ProtocolError(f"input {name!r}: a value is not finite or out of range for {spec_dtype}")
    return arr.astype(dtype).reshape(shape)


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    *,
    expected_inputs: Mapping[str, TensorSpec | tuple[str, Sequence[int]]],
    max_batch_size: int,
) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """Decode an infer request body into the request (tensor `data` dropped) and one array per input.

    `header_length` is the `Inference-Header-Content-Length` value: None means the whole body is
    JSON. Binary tensors are read-only views on `body`. Every input the model declares must be
    present exactly once, with the model's datatype, and a shape `[batch, *dims]` (batch within
    `max_batch_size`; no batch dimension when it is 0).
    """
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        if header_length < 0:
            raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must not be negative, got {header_length}")
        if header_length > len(body):
            raise V2ProtocolError(
                f"{HEADER_LENGTH_HEADER} is {header_length} but the request body has only {len(body)} bytes"
            )
        header, binary = view[:header_length], view[header_length:]
    try:
        request = InferenceRequest.model_validate_json(bytes(header))
    except ValidationError as err:
        hint = ""
        if header_length is None and any(e["type"] == "json_invalid" for e in err.errors()):
            hint = f" (a body with binary tensor data needs the {HEADER_LENGTH_HEADER} header)"
        raise V2ProtocolError(validation_message(err.errors(), limit=3, lead="invalid inference request: ") + hint) from None

    specs = {name: TensorSpec(s[0], tuple(s[1])) for name, s in expected_inputs.items()}
    names = [i.name for i in request.inputs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise V2ProtocolError(f"input {duplicated[0]!r} is given more than once")
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise V2ProtocolError(f"unexpected input {unknown[0]!r}; the model's inputs are {sorted(specs)}")
    missing = [n for n in specs if n not in names]
    if missing:
        raise V2ProtocolError(f"missing input {missing[0]!r}")

    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for inp in request.inputs:
        spec = specs[inp.name]
        if spec.datatype not in V2_TO_NUMPY:
            raise V2ProtocolError(f"input {inp.name!r}: datatype {spec.datatype} is not supported over HTTP here")
        if inp.datatype != spec.datatype:
            raise V2ProtocolError(
                f"input {inp.name!r} has datatype {inp.datatype}, the model expects {spec.datatype}"
            )
        _check_shape(inp.name, inp.shape, spec.dims, max_batch_size)
        params = inp.parameters or {}
        where = f"input {inp.name!r}"
        if "shared_memory_region" in params:
            raise V2ProtocolError(f"{where}: shared memory is not supported")
        size = _int_param(params, "binary_data_size", where)
        if size is not None:
            if inp.data is not None:
                raise V2ProtocolError(f"{where} has both JSON data and binary_data_size")
            if header_length is None:
                raise V2ProtocolError(f"{where} has binary_data_size but the request has no {HEADER_LENGTH_HEADER}")
            if offset + size > len(binary):
                raise V2ProtocolError(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            arrays[inp.name] = _decode_binary(binary[offset : offset + size], spec.datatype, inp.shape, inp.name)
            offset += size
        elif inp.data is not None:
            arrays[inp.name] = _decode_json(inp.data, spec.datatype, inp.shape, inp.name)
        else:
            raise V2ProtocolError(f"{where} has neither data nor binary_data_size")
    if offset != len(binary):
        raise V2ProtocolError(f"{len(binary) - offset} bytes of binary data after the header belong to no input")

    request = request.model_copy(
        update={"inputs": [i.model_copy(update={"data": None}) for i in request.inputs]}
    )
    for key in ("binary_data_output",):
        _bool_param(request.parameters or {}, key, "request", False)
    request_timeout_s(request)
    return request, arrays


def request_timeout_s(request: InferenceRequest) -> float | None:
    """Triton's request-level `timeout` parameter (microseconds) in seconds; None when absent or 0."""
    micros = _int_param(request.parameters or {}, "timeout", "request")
    return micros / 1e6 if micros else None


# --- response encoding -------------------------------------------------------------------------


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
    default_binary = _bool_param(req_params, "binary_data_output", "request", binary_default)
    if request.outputs:
        wanted = [(o.name, o.parameters or {}) for o in request.outputs]
        names = [n for n, _ in wanted]
        for name in names:
            if name not in outputs:
                raise V2ProtocolError(f"unexpected output {name!r}; the model's outputs are {sorted(outputs)}")
            if names.count(name) > 1:
                raise V2ProtocolError(f"output {name!r} is requested more than once")
    else:
        wanted = [(name, {}) for name in outputs]

    out_tensors: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for name, params in wanted:
        where = f"output {name!r}"
        if "shared_memory_region" in params:
            raise V2ProtocolError(f"{where}: shared memory is not supported")
        binary = _bool_param(params, "binary_data", where, default_binary)
        arr = np.asarray(outputs[name])
        count = _int_param(params, "classification", where, 0)
        if count:
            arr = classify(arr, count, labels, batched=batched)
        datatype = numpy_to_v2(arr.dtype)
        if binary:
            raw = _encode_bytes_elements(arr) if datatype == "BYTES" else np.ascontiguousarray(
                arr, dtype=V2_TO_NUMPY[datatype]
            ).tobytes()
            chunks.append(raw)
            out_tensors.append(
                ResponseOutput(
                    name=name, shape=list(arr.shape), datatype=datatype, parameters={"binary_data_size": len(raw)}
                )
            )
        else:
            out_tensors.append(
                ResponseOutput(name=name, shape=list(arr.shape), datatype=datatype, data=_json_data(arr, datatype))
            )

    response = InferenceResponse(model_name=model_name, model_version=version, id=request.id, outputs=out_tensors)
    header = response.model_dump_json(exclude_none=True).encode("utf-8")
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *chunks]), headers


def encode_content_encoding(
    body: bytes, headers: dict[str, str], accept_encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    """Compress a response when the client asks (tritonclient's `response_compression_algorithm`).

    `Inference-Header-Content-Length` keeps the uncompressed JSON length: the client inflates first.
    """
    accepted: dict[str, float] = {}
    for part in (accept_encoding or "").split(","):
        token, _, q = part.strip().partition(";")
        try:
            weight = float(q.strip()[2:]) if q.strip().startswith("q=") else 1.0
        except ValueError:
            weight = 0.0
        if token:
            accepted[token.strip().lower()] = weight
    for encoding in ("gzip", "deflate"):
        if accepted.get(encoding, 0.0) > 0.0:
            if encoding == "gzip":
                data = gzip.compress(body, compresslevel=6)
            else:
                data = zlib.compress(body, 6)
            return data, {**headers, "Content-Encoding": encoding}
    return body, headers


__all__ = [
    "BINARY_CONTENT_TYPE", "CONFIG_TO_V2", "HEADER_LENGTH_HEADER", "JSON_CONTENT_TYPE", "V2_TO_NUMPY",
    "InferenceRequest", "InferenceResponse", "RequestInput", "RequestOutput", "ResponseOutput",
    "TensorSpec", "classify",
    "decode_content_encoding", "encode_content_encoding", "encode_infer_response", "input_specs",
    "numpy_to_v2", "output_specs", "parse_header_length", "parse_infer_request", "request_timeout_s",
    "v2_to_numpy",
]
