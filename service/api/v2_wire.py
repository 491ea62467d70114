"""Open Inference Protocol v2 (KServe / Triton REST): the wire vocabulary both directions share.

Why a module of its own: the request decoder (service/api/v2_codec.py), the response encoder
(service/api/v2_response.py) and the metadata (service/api/v2_meta.py) all speak in the same terms,
so the datatypes table, the tensor specs, the pydantic wire models, the header and content-type names
and Triton's parameter rules live here once, with no decoding or encoding logic.

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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from service.errors import V2ProtocolError
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


#: the longest request id taken: it is echoed in the answer (and compressed with it), so without a bound its
#: size is the client's choice. Triton sets none; ids in use are UUIDs or counters. (Other strings a client
#: sends are echoed only in error messages, which service/errors.py clips.)
MAX_ID_CHARS = 1024


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
    id: Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)] | None = None
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


# --- Triton's request parameters ---------------------------------------------------------------

# Triton's integer parameters are 64-bit; a larger one (10**400) is refused, not computed with
MAX_INT_PARAM = 2**63 - 1
MIN_INT_PARAM = -(2**63)
# error messages quote at most this much of what the client sent (a shape of a million numbers)
ECHO_CHARS = 120


def echo(value: object) -> str:
    """`repr(value)` cut to ECHO_CHARS characters, for error messages."""
    text = repr(value) if not isinstance(value, list) or len(value) <= 64 else repr(value[:64])[:-1] + ", ...]"
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def int_param(params: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT_PARAM:
        raise V2ProtocolError(
            f"{where}: parameter {key!r} must be a non-negative integer up to {MAX_INT_PARAM}, got {echo(value)}"
        )
    return value


def bool_param(params: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise V2ProtocolError(f"{where}: parameter {key!r} must be true or false, got {echo(value)}")
    return value


def check_parameters(params: Mapping[str, Any] | None, where: str) -> None:
    """Each value is a string, a boolean, a finite number or a 64-bit integer, as Triton takes a parameter it
    does not interpret: one this server ignores is refused out of range too (10**400 is no number to pass on)."""
    for key, value in (params or {}).items():
        if isinstance(value, (str, bool)):
            continue
        if isinstance(value, int):
            if not MIN_INT_PARAM <= value <= MAX_INT_PARAM:
                raise V2ProtocolError(f"{where}: parameter {echo(key)} must be an integer within "
                                      f"{MIN_INT_PARAM}..{MAX_INT_PARAM}, got {echo(value)}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise V2ProtocolError(f"{where}: parameter {echo(key)} is out of range for a number")
        else:
            raise V2ProtocolError(f"{where}: parameter {echo(key)} must be a string, a boolean or a number, "
                                  f"got {echo(value)}")


__all__ = [
    "BINARY_CONTENT_TYPE", "CONFIG_TO_V2", "ECHO_CHARS", "HEADER_LENGTH_HEADER", "JSON_CONTENT_TYPE",
    "MAX_ID_CHARS", "MAX_INT_PARAM", "MIN_INT_PARAM", "V2_TO_NUMPY", "InferenceRequest",
    "InferenceResponse", "RequestInput", "RequestOutput", "ResponseOutput", "TensorSpec", "WireModel", "bool_param",
    "check_parameters", "echo", "input_specs", "int_param", "numpy_to_v2", "output_specs", "v2_to_numpy",
]
