"""Open Inference Protocol v2: decoding an infer request, from body bytes to numpy arrays.

Why a module of its own: the request side is where client bytes are checked, so it is easiest to get
right (and to test against the real `tritonclient.http`) as pure functions from bytes to arrays, with
no routing, model store or batcher in sight, and with the cached check of a repeated binary header
(`_binary_plan`) beside the general path it must agree with. The /v2 router calls these functions;
everything here raises `V2ProtocolError` (service/errors.py: an `InvalidInput`, HTTP 400, and a
`ValueError`) with a message meant for the client; an inflated body over the limit is a `PayloadTooLarge`
(413) and an unknown Content-Encoding an `UnsupportedMediaType` (415). The shared vocabulary (datatypes,
wire models, specs followed) is service/api/v2_wire.py; the response side service/api/v2_response.py;
metadata, the /config JSON and statistics service/api/v2_meta.py.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from math import prod
from typing import Any, NamedTuple

import numpy as np
from pydantic import ValidationError

from service.api.v2_wire import (
    HEADER_LENGTH_HEADER,
    V2_TO_NUMPY,
    InferenceRequest,
    RequestInput,
    TensorSpec,
    bool_param,
    check_parameters,
    echo,
    int_param,
)
from service.errors import PayloadTooLarge, UnsupportedMediaType, V2ProtocolError, validation_message


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


GZIP_MAGIC = b"\x1f\x8b"


def decode_content_encoding(body: bytes, content_encoding: str | None, *, max_size: int) -> bytes:
    """Undo gzip/deflate request compression (tritonclient's `request_compression_algorithm`),
    never inflating past `max_size` bytes (a compressed body can be a bomb).

    The body is one compressed stream and nothing after it: bytes after its end are refused, not ignored.
    A second gzip member (RFC 1952 allows a series) is refused too: no client sends one, and a body of
    millions of empty members would cost a decompressor each."""
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
        if inflater.unused_data:
            if encoding == "gzip" and inflater.unused_data.startswith(GZIP_MAGIC):
                raise V2ProtocolError("request body holds more than one gzip member; send a single gzip stream")
            raise V2ProtocolError(f"{len(inflater.unused_data)} bytes follow the end of the {encoding} data "
                                  "in the request body")
        return out
    raise V2ProtocolError(f"request body is not valid {encoding} data")


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
    for got, expected in zip(shape, dims, strict=True):  # ranks checked above
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
        message = validation_message(err.errors(), limit=3, lead="invalid inference request: ")
        raise V2ProtocolError(message + hint) from None


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
        size = int_param(params, "binary_data_size", where)
        check_parameters(params, where)
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


#: Triton's request parameters of a fixed type (service/api/v2_wire.py has the rule for the others)
REQUEST_BOOL_PARAMETERS = ("binary_data_output", "sequence_start", "sequence_end")
REQUEST_UINT_PARAMETERS = ("timeout", "priority")


def _check_tail(request: InferenceRequest, left: int) -> None:
    """What the general path checks after every tensor: no stray binary bytes, valid request and output
    parameters (the outputs' before the model runs, not when its answer is encoded)."""
    if left:
        raise V2ProtocolError(f"{left} bytes of binary data after the header belong to no input")
    params = request.parameters or {}
    for key in REQUEST_BOOL_PARAMETERS:
        bool_param(params, key, "request", False)
    for key in REQUEST_UINT_PARAMETERS:
        int_param(params, key, "request")
    if not isinstance(params.get("sequence_id"), str):  # Triton takes a string or an unsigned integer
        int_param(params, "sequence_id", "request")
    check_parameters(params, "request")
    for out in request.outputs or ():
        where = f"output {out.name!r}"
        out_params = out.parameters or {}
        bool_param(out_params, "binary_data", where, False)
        int_param(out_params, "classification", where)
        check_parameters(out_params, where)


#: decodes one input's inline data (its `data`, checked against the model's datatype and the input's shape)
DataDecoder = Callable[[RequestInput, str], np.ndarray]


def _decode_json_input(inp: RequestInput, datatype: str) -> np.ndarray:
    assert inp.data is not None
    return _decode_json(inp.data, datatype, inp.shape, inp.name)


def _decode_inputs(
    request: InferenceRequest, binary: memoryview, specs: Mapping[str, TensorSpec], has_header_length: bool,
    max_batch_size: int, decode_data: DataDecoder = _decode_json_input,
) -> dict[str, np.ndarray]:
    """The general path: check and decode every input (binary or inline data) in order, then the tail."""
    arrays: dict[str, np.ndarray] = {}

    def on_binary(p: _BinaryInput) -> None:
        arrays[p.name] = _decode_binary(binary[p.offset : p.offset + p.size], p.datatype, p.shape, p.name)

    def on_json(inp: RequestInput) -> None:
        arrays[inp.name] = decode_data(inp, specs[inp.name].datatype)

    offset = _check_inputs(request, specs, has_header_length, max_batch_size, len(binary), on_binary, on_json)
    _check_tail(request, len(binary) - offset)
    return arrays


def decode_tensors(
    request: InferenceRequest, binary: bytes | memoryview, *,
    expected_inputs: Mapping[str, TensorSpec], max_batch_size: int, decode_data: DataDecoder | None = None,
) -> dict[str, np.ndarray]:
    """The checks and decoding of `parse_infer_request` for a request already in wire-model form (gRPC's, from
    service/api/grpc/codec.py): binary inputs (`binary_data_size`, consecutive in `binary`) become read-only views;
    an input with `data` goes to `decode_data` (default: JSON's) once its name, datatype and shape are checked. Same
    checks, order and messages as REST."""
    view = binary if isinstance(binary, memoryview) else memoryview(binary)
    specs = {name: TensorSpec(s.datatype, tuple(s.dims)) for name, s in expected_inputs.items()}
    return _decode_inputs(request, view, specs, True, max_batch_size, decode_data or _decode_json_input)


def decode_json_data(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """One input's inline numbers (a list, or an array of them) checked and converted as REST's JSON `data` is."""
    return _decode_json(data, datatype, shape, name)


def check_binary_request(
    request: InferenceRequest, expected_inputs: Mapping[str, TensorSpec], max_batch_size: int, binary_bytes: int,
) -> tuple[tuple[str, str, tuple[int, ...], int, int], ...]:
    """Check a request whose inputs are all binary and numeric (no tensor bytes needed: no BOOL or BYTES) as
    `parse_infer_request` does, tail included: where each input lies, as (name, datatype, shape, offset, size)."""
    plan: list[_BinaryInput] = []
    offset = _check_inputs(request, expected_inputs, True, max_batch_size, binary_bytes, plan.append)
    _check_tail(request, binary_bytes - offset)
    return tuple((p.name, p.datatype, tuple(p.shape), p.offset, p.size) for p in plan)


def request_timeout_s(request: InferenceRequest) -> float | None:
    """Triton's request-level `timeout` parameter (microseconds) in seconds; None when absent or 0."""
    micros = int_param(request.parameters or {}, "timeout", "request")
    return micros / 1e6 if micros else None


__all__ = [
    "DataDecoder", "check_binary_request", "decode_content_encoding", "decode_json_data", "decode_tensors",
    "parse_header_length", "parse_infer_request", "request_timeout_s",
]
