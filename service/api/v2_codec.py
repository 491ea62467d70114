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

import functools
import gzip
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
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


@functools.lru_cache(maxsize=64)
def numpy_to_v2(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name of a numpy dtype (object and bytes/str arrays are BYTES); looked up once per dtype."""
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
    if any(d < 0 for d in shape):
        raise V2ProtocolError(f"input {name!r}: shape {echo(shape)} has a negative dimension")
    if any(d > _MAX_DIM for d in shape):
        raise V2ProtocolError(f"input {name!r}: shape {echo(shape)} has a dimension above {_MAX_DIM}")
    rank = len(dims) + (1 if max_batch_size > 0 else 0)
    if len(shape) != rank:
        raise V2ProtocolError(f"input {name!r}: shape {echo(shape)} does not match the model's "
                              f"{_wanted_shape(dims, max_batch_size)}")
    if max_batch_size > 0:
        if not 1 <= shape[0] <= max_batch_size:
            raise V2ProtocolError(
                f"input {name!r}: batch size {shape[0]} is outside 1..{max_batch_size} (the model's max_batch_size)"
            )
        shape = shape[1:]
    for got, expected in zip(shape, dims):
        if expected >= 0 and got != expected:
            raise V2ProtocolError(f"input {name!r}: shape does not match the model's "
                                  f"{_wanted_shape(dims, max_batch_size)}")


def _wanted_shape(dims: Sequence[int], max_batch_size: int) -> str:
    """The model's input shape for an error message ("[batch, 3, 224, 224]"; "*" for a variable dimension)."""
    return "[" + ", ".join(["batch"] * (max_batch_size > 0) + [str(d) if d >= 0 else "*" for d in dims]) + "]"


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
    _check_binary_size(len(raw), spec_dtype, shape, name)
    if spec_dtype == "BOOL" and count and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise V2ProtocolError(f"input {name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _check_binary_size(size: int, spec_dtype: str, shape: list[int], name: str) -> None:
    count = prod(shape)
    itemsize = V2_TO_NUMPY[spec_dtype].itemsize
    if size != count * itemsize:
        raise V2ProtocolError(
            f"input {name!r}: binary_data_size is {size} bytes but shape {echo(shape)} of {spec_dtype} "
            f"needs {count * itemsize}"
        )


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


class _BinaryInput(NamedTuple):
    """Where one binary input lies after the header, and what it decodes to."""

    name: str
    datatype: str
    shape: list[int]
    offset: int
    size: int


#: headers up to this many bytes have their checked outcome cached (`_binary_plan`)
PLAN_CACHE_HEADER_BYTES = 4096


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

    A client sends the same header with every request: for a header whose tensors are all binary, what
    the header says (the checked request and where each tensor lies) depends only on the header bytes,
    the model's inputs, `max_batch_size` and the binary part's length, so it is checked once and cached
    (`_binary_plan`); only the tensor bytes are decoded per request. Any other body takes the general path.
    The returned request may then be shared by many requests: callers read it, never change it.
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
    specs = {name: s if type(s) is TensorSpec and type(s.dims) is tuple else TensorSpec(s[0], tuple(s[1]))
             for name, s in expected_inputs.items()}
    if header_length is not None and header_length <= PLAN_CACHE_HEADER_BYTES:
        planned = _binary_plan(bytes(header), tuple(specs.items()), max_batch_size, len(binary))
        if planned is not None:
            request, plan = planned  # sizes checked, no BOOL or BYTES: each tensor is a view on its bytes
            return request, {
                p.name: np.frombuffer(binary[p.offset : p.offset + p.size], dtype=V2_TO_NUMPY[p.datatype]).reshape(
                    p.shape)
                for p in plan
            }
    request = _validate_header(header, header_length is None)
    arrays = _decode_inputs(request, binary, specs, header_length is not None, max_batch_size)
    if any(i.data is not None for i in request.inputs):
        request = request.model_copy(
            update={"inputs": [i.model_copy(update={"data": None}) for i in request.inputs]}
        )
    return request, arrays


@functools.lru_cache(maxsize=256)
def _binary_plan(
    header: bytes, specs: tuple[tuple[str, TensorSpec], ...], max_batch_size: int, binary_bytes: int
) -> tuple[InferenceRequest, tuple[_BinaryInput, ...]] | None:
    """The checked request of a header whose inputs are all binary and numeric, and where each lies; None
    for any other header (JSON data, BOOL or BYTES tensors: their checks read the tensor itself, in input
    order). Raises what the general path raises (lru_cache keeps no exception: a bad header is checked
    again each time)."""
    if any(spec.datatype in ("BOOL", "BYTES") for _, spec in specs):
        return None
    request = _validate_header(memoryview(header), False)
    if any(i.data is not None for i in request.inputs):
        return None
    plan: list[_BinaryInput] = []
    offset = _check_inputs(request, dict(specs), True, max_batch_size, binary_bytes, plan.append)
    _check_tail(request, binary_bytes - offset)
    return request, tuple(plan)


def _validate_header(header: memoryview, whole_body: bool) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(bytes(header))
    except ValidationError as err:
        hint = ""
        if whole_body and any(e["type"] == "json_invalid" for e in err.errors()):
            hint = f" (a body with binary tensor data needs the {HEADER_LENGTH_HEADER} header)"
        raise V2ProtocolError(validation_message(err.errors(), limit=3, lead="invalid inference request: ") + hint) from None


def _check_inputs(
    request: InferenceRequest, specs: Mapping[str, TensorSpec], has_header_length: bool, max_batch_size: int,
    binary_bytes: int, on_binary: Callable[[_BinaryInput], None], on_json: Callable[[RequestInput], None] | None = None,
) -> int:
    """Check the request's inputs against the model's, in input order; hand each binary input to `on_binary`
    and each JSON one to `on_json` as it is checked (so errors come in the order of the inputs). Returns the
    binary bytes the inputs use."""
    names = [i.name for i in request.inputs]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise V2ProtocolError(f"input {duplicated[0]!r} is given more than once")
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise V2ProtocolError(f"unexpected input {unknown[0]!r}; the model's inputs are {sorted(specs)}")
    missing = [n for n in specs if n not in names]
    if missing:
        raise V2ProtocolError(f"missing input {missing[0]!r}")

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
            if not has_header_length:
                raise V2ProtocolError(f"{where} has binary_data_size but the request has no {HEADER_LENGTH_HEADER}")
            if offset + size > binary_bytes:
                raise V2ProtocolError(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({binary_bytes - offset} binary bytes left)"
                )
            if spec.datatype != "BYTES":
                _check_binary_size(size, spec.datatype, inp.shape, inp.name)
            on_binary(_BinaryInput(inp.name, spec.datatype, inp.shape, offset, size))
            offset += size
        elif inp.data is not None and on_json is not None:
            on_json(inp)
        else:
            raise V2ProtocolError(f"{where} has neither data nor binary_data_size")
    return offset


def _check_tail(request: InferenceRequest, left: int) -> None:
    """What the general path checks after every tensor: no stray binary bytes, valid request parameters."""
    if left:
        raise V2ProtocolError(f"{left} bytes of binary data after the header belong to no input")
    for key in ("binary_data_output",):
        _bool_param(request.parameters or {}, key, "request", False)
    request_timeout_s(request)


def _decode_inputs(
    request: InferenceRequest, binary: memoryview, specs: Mapping[str, TensorSpec], has_header_length: bool,
    max_batch_size: int,
) -> dict[str, np.ndarray]:
    """The general path: check and decode every input (binary or JSON) in order, then the tail."""
    arrays: dict[str, np.ndarray] = {}

    def on_binary(p: _BinaryInput) -> None:
        arrays[p.name] = _decode_binary(binary[p.offset : p.offset + p.size], p.datatype, p.shape, p.name)

    def on_json(inp: RequestInput) -> None:
        assert inp.data is not None
        arrays[inp.name] = _decode_json(inp.data, specs[inp.name].datatype, inp.shape, inp.name)

    offset = _check_inputs(request, specs, has_header_length, max_batch_size, len(binary), on_binary, on_json)
    _check_tail(request, len(binary) - offset)
    return arrays


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

    described: list[_OutputHeader] = []
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


def encode_content_encoding(
    body: bytes, headers: dict[str, str], accept_encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    """Compress a response when the client asks (tritonclient's `response_compression_algorithm`).

    `Inference-Header-Content-Length` keeps the uncompressed JSON length: the client inflates first.
    """
    if not accept_encoding:
        return body, headers
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
