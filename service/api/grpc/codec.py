"""KServe v2 / Triton gRPC messages <-> the REST v2 wire models, so both protocols share one set of checks.

Why a translator and not a second decoder: the REST codec (service/api/v2_codec.py) already checks names,
datatypes, shapes, sizes and parameters with the messages clients see. A `ModelInferRequest` is turned into the
same `InferenceRequest` (its raw contents described as binary inputs, its typed contents as inline data) and
decoded by `decode_tensors`: raw contents become `np.frombuffer` views (no copy), typed contents are counted
before they are converted (a huge repeated field costs nothing past the count). Answers are built from the
REST encoder's choice of outputs (`raw_outputs`: the classification extension included) as Triton does: every
output in `raw_output_contents`. Metadata, configuration and statistics come from the same shaping as REST's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from service.api.v2_codec import check_binary_request, decode_json_data, decode_tensors
from service.api.v2_meta import ModelMetadata, ModelStatisticsResponse, RepositoryIndexEntry
from service.api.v2_response import RawOutput
from service.api.v2_wire import (
    MAX_ID_CHARS,
    V2_TO_NUMPY,
    InferenceRequest,
    RequestInput,
    RequestOutput,
    TensorSpec,
    echo,
)
from service.errors import V2ProtocolError

#: the typed `InferTensorContents` field of each datatype (Triton's rule); FP16 and BF16 travel raw only
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
#: what the typed values are read into before the REST checks (range, finiteness) convert them to the datatype
_READ_AS: dict[str, type[Any]] = {
    "bool_contents": np.bool_, "int_contents": np.int64, "int64_contents": np.int64, "uint_contents": np.uint64,
    "uint64_contents": np.uint64, "fp32_contents": np.float64, "fp64_contents": np.float64,
}


class TypedContents:
    """An input's typed contents, carried as its inline `data` until its name, datatype and shape are checked."""

    __slots__ = ("contents",)

    def __init__(self, contents: Any) -> None:
        self.contents = contents


def parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf map of `InferParameter` as REST's parameters dict (the value its oneof holds)."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out


def infer_request(message: Any) -> tuple[InferenceRequest, bytes]:
    """The REST wire model of a `ModelInferRequest` and the binary part its raw contents make (one input: its
    bytes as they are; several: joined in input order, as REST's binary part)."""
    if len(message.id) > MAX_ID_CHARS:
        raise V2ProtocolError(f"request id of {len(message.id)} characters exceeds {MAX_ID_CHARS}")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise V2ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        params = parameters(tensor.parameters)
        data: Any = None  # typed contents ride as the inline data REST reads from JSON
        if raw:
            if tensor.HasField("contents"):
                raise V2ProtocolError(f"input {tensor.name!r} has both contents and raw_input_contents")
            params["binary_data_size"] = len(raw[index])
        elif tensor.HasField("contents"):
            data = TypedContents(tensor.contents)
        inputs.append(RequestInput.model_construct(
            name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype, parameters=params or None, data=data))
    outputs = [RequestOutput.model_construct(name=o.name, parameters=parameters(o.parameters) or None)
               for o in message.outputs]
    request = InferenceRequest.model_construct(
        id=message.id or None, parameters=parameters(message.parameters) or None, inputs=inputs,
        outputs=outputs or None)
    binary = raw[0] if len(raw) == 1 else b"".join(raw)
    return request, binary


def decode_typed(inp: RequestInput, datatype: str) -> np.ndarray:
    """One input's typed contents, counted against its (checked) shape before any value is read."""
    holder = inp.data
    assert isinstance(holder, TypedContents)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise V2ProtocolError(f"input {inp.name!r}: {datatype} data travels in raw_input_contents only")
    values = getattr(holder.contents, field)
    need = prod(inp.shape)
    if len(values) != need:
        raise V2ProtocolError(f"input {inp.name!r}: {field} has {len(values)} elements but shape {echo(inp.shape)} "
                              f"needs {need}")
    if datatype == "BYTES":
        out = np.empty(need, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(inp.shape)
    return decode_json_data(np.fromiter(values, dtype=_READ_AS[field], count=need), datatype, inp.shape, inp.name)


def decode_infer_request(
    message: Any, specs: Mapping[str, TensorSpec], max_batch_size: int
) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """A `ModelInferRequest` checked against the model's inputs as REST checks a request: (request, arrays).

    A client sends the same request but for the tensor bytes (and its id) again and again: when every input is raw
    and numeric, the checked outcome depends only on the message's names, datatypes, shapes, byte counts and
    parameters, so it is checked once and cached (`_raw_plan`, as REST caches a binary request's header); only the
    views on the tensor bytes are made per call. Any other message takes the general path. The returned request
    may then be shared by many calls: callers read it, never change it, and take the id from the message."""
    if len(message.id) > MAX_ID_CHARS:
        raise V2ProtocolError(f"request id of {len(message.id)} characters exceeds {MAX_ID_CHARS}")
    raw = message.raw_input_contents
    if raw and len(raw) == len(message.inputs) and all(spec.datatype in _PLANNED for spec in specs.values()):
        key = _message_key(message)
        if key is not None:
            request, plan = _raw_plan(key, tuple(specs.items()), max_batch_size)
            return request, {name: np.frombuffer(raw[index], dtype=V2_TO_NUMPY[datatype]).reshape(shape)
                             for index, (name, datatype, shape) in enumerate(plan)}
    request, binary = infer_request(message)
    arrays = decode_tensors(request, binary, expected_inputs=specs, max_batch_size=max_batch_size,
                            decode_data=decode_typed)
    return request, arrays


#: datatypes whose raw bytes need no check of their own (BOOL and BYTES do: the general path reads them)
_PLANNED = frozenset(V2_TO_NUMPY) - {"BOOL", "BYTES"}


def _frozen(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(parameters(params).items())) if params else ()


def _message_key(message: Any) -> tuple[Any, ...] | None:
    """What the checks of a raw message read, hashable (None: an input carries typed contents too)."""
    inputs = []
    for tensor, raw in zip(message.inputs, message.raw_input_contents, strict=True):
        if tensor.HasField("contents"):
            return None
        inputs.append((tensor.name, tensor.datatype, tuple(tensor.shape), _frozen(tensor.parameters), len(raw)))
    outputs = tuple((o.name, _frozen(o.parameters)) for o in message.outputs)
    return tuple(inputs), outputs, _frozen(message.parameters)


@functools.lru_cache(maxsize=256)
def _raw_plan(
    key: tuple[Any, ...], specs: tuple[tuple[str, TensorSpec], ...], max_batch_size: int
) -> tuple[InferenceRequest, tuple[tuple[str, str, tuple[int, ...]], ...]]:
    """The checked request (no id) of a raw message and each input's (name, datatype, shape), in input order.
    Raises what the general path raises (lru_cache keeps no exception)."""
    inputs, outputs, request_params = key
    request = InferenceRequest.model_construct(
        id=None, parameters=dict(request_params) or None,
        inputs=[RequestInput.model_construct(name=name, shape=list(shape), datatype=datatype,
                                             parameters={**dict(params), "binary_data_size": size}, data=None)
                for name, datatype, shape, params, size in inputs],
        outputs=[RequestOutput.model_construct(name=name, parameters=dict(params) or None)
                 for name, params in outputs] or None)
    plan = check_binary_request(request, dict(specs), max_batch_size, sum(i[4] for i in inputs))
    return request, tuple((name, datatype, shape) for name, datatype, shape, _, _ in plan)


def infer_response(model: str, version: str, request_id: str | None, outputs: Sequence[RawOutput]) -> Any:
    """The `ModelInferResponse`: every output's bytes in `raw_output_contents`, as Triton answers."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for output in outputs:
        tensor = response.outputs.add()
        tensor.name, tensor.datatype = output.name, output.datatype
        tensor.shape.extend(output.shape)
    response.raw_output_contents.extend(o.raw for o in outputs)
    return response


def model_metadata(meta: ModelMetadata) -> Any:
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=meta.name, versions=meta.versions, platform=meta.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
    )


def model_config(config_json: dict[str, Any]) -> Any:
    """Triton's `ModelConfig` message from the configuration REST prints (service/api/v2_meta.py)."""
    config = json_format.ParseDict(config_json, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    return service_pb2.ModelConfigResponse(config=config)


def model_statistics(stats: ModelStatisticsResponse) -> Any:
    return json_format.ParseDict(stats.model_dump(), service_pb2.ModelStatisticsResponse(),
                                 ignore_unknown_fields=True)


def repository_index(entries: Sequence[RepositoryIndexEntry]) -> Any:
    index = service_pb2.RepositoryIndexResponse.ModelIndex
    return service_pb2.RepositoryIndexResponse(models=[
        index(name=e.name, version=e.version or "", state=e.state or "", reason=e.reason or "") for e in entries])


__all__ = [
    "CONTENTS_FIELD", "TypedContents", "decode_infer_request", "decode_typed", "infer_request", "infer_response",
    "model_config", "model_metadata", "model_statistics", "parameters", "repository_index",
]
