"""The load generator's gRPC client: KServe v2 / Triton `ModelInfer` calls on one grpc.aio channel, or the same
messages on one `ModelStreamInfer` stream.

Why prebuilt bytes through a generic unary call: the request message is serialised once (as the HTTP bodies
are, bench/payloads.py), so a call costs the client one send and one receive, and the response is counted by
its status without being decoded (the HTTP client reads but does not parse bodies either). One channel carries
every outstanding call, as perf_analyzer's gRPC mode shares one by default. A failed call's gRPC status is
recorded as the HTTP status REST would have answered, so a point's error counts read the same for both
protocols. On the stream each message gets its own `id` (appended to the prebuilt bytes: a protobuf field
given twice keeps the last) and responses, which come back as they complete, are matched by it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.payloads import RequestSpec
from bench.results import Sample

__all__ = ["MODEL_INFER", "MODEL_STREAM_INFER", "GrpcSender", "GrpcStreamSender", "infer_message", "open_channel"]

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
#: ModelInferRequest.id's tag (field 3, length-delimited)
_ID_TAG = b"\x1a"

#: the HTTP status REST answers for each gRPC status (Triton's mapping, read backwards); anything else is 500
_HTTP_STATUS = {"OK": 200, "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
                "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
                "CANCELLED": 499}


def infer_message(model: str, shape: tuple[int, ...], input_name: str = "pixel_values",
                  output_name: str | None = "logits", seed: int = 0) -> RequestSpec:
    """A serialised `ModelInferRequest` carrying the same random FP32 tensor as bench.payloads.infer_request
    (same seed, same values) in `raw_input_contents`; `path` is the gRPC method."""
    from tritonclient.grpc import service_pb2

    if len(shape) < 1 or any(d <= 0 for d in shape):
        raise ValueError(f"tensor shape must be non-empty with positive dims, got {shape}")
    tensor = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor_input = request.inputs.add()
    tensor_input.name, tensor_input.datatype = input_name, "FP32"
    tensor_input.shape.extend(shape)
    if output_name:
        request.outputs.add().name = output_name
    request.raw_input_contents.append(tensor.astype("<f4").tobytes())
    return RequestSpec(path=MODEL_INFER, body=request.SerializeToString(), description=f"gRPC raw FP32 {list(shape)}",
                       images_per_request=shape[0])


def open_channel(target: str) -> Any:
    """An insecure grpc.aio channel to `target` (host:port) without message-size caps on the client side."""
    import grpc

    return grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", -1),
                                                      ("grpc.max_receive_message_length", -1)])


class GrpcSender:
    """Sends one prebuilt ModelInfer message on a shared channel and records a Sample (the `Sender` interface)."""

    def __init__(self, channel: Any, spec: RequestSpec, timeout_s: float) -> None:
        self.spec = spec
        self.timeout_s = timeout_s
        self._call = channel.unary_unary(spec.path)  # no (de)serialisers: bytes out, bytes in

    async def send(self, start: float | None = None) -> Sample:
        import grpc

        t0 = time.perf_counter() if start is None else start
        try:
            await self._call(self.spec.body, timeout=self.timeout_s)
            status = 200
        except grpc.aio.AioRpcError as e:
            status = _HTTP_STATUS.get(e.code().name, 500)
        except OSError:
            status = 0
        return Sample(start=t0, end=time.perf_counter(), status=status, images=self.spec.images_per_request)


def _id_field(rid: int) -> bytes:
    """ModelInferRequest.id = str(rid), serialised (ids below 10**127 have a one-byte length)."""
    text = str(rid).encode()
    return _ID_TAG + bytes([len(text)]) + text


class GrpcStreamSender:
    """Sends the prebuilt message on one shared `ModelStreamInfer` stream (the `Sender` interface): one write at a
    time (grpc.aio allows no more), one reader matching responses to senders by id. A response's in-band error
    counts as 500 (Triton's stream carries a message, not a status); the stream failing fails what waits."""

    def __init__(self, channel: Any, spec: RequestSpec, timeout_s: float) -> None:
        import asyncio

        self.spec = spec
        self.timeout_s = timeout_s
        self._call = channel.stream_stream(MODEL_STREAM_INFER)()
        self._lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._ids = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        import grpc
        from tritonclient.grpc import service_pb2

        status = 0
        try:
            while True:
                data = await self._call.read()
                if data is grpc.aio.EOF:
                    break
                reply = service_pb2.ModelStreamInferResponse.FromString(data)
                future = self._waiting.pop(reply.infer_response.id, None)
                if future is not None and not future.done():
                    future.set_result(500 if reply.error_message else 200)
        except grpc.aio.AioRpcError as e:
            status = _HTTP_STATUS.get(e.code().name, 500)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(status)
            self._waiting.clear()

    async def send(self, start: float | None = None) -> Sample:
        import asyncio

        t0 = time.perf_counter() if start is None else start
        self._ids += 1
        number = self._ids
        rid = str(number)
        future = self._waiting[rid] = asyncio.get_running_loop().create_future()
        try:
            async with self._lock:
                await self._call.write(self.spec.body + _id_field(number))
            status = await future  # (the stream's own deadline bounds the wait)
        except Exception:  # noqa: BLE001 - the stream failed: what the reader saw, else no answer
            status = future.result() if future.done() else 0
        finally:
            self._waiting.pop(rid, None)
        return Sample(start=t0, end=time.perf_counter(), status=status, images=self.spec.images_per_request)

    async def close(self) -> None:
        """End the stream (the server answers what it has, then the reader ends)."""
        try:
            await self._call.done_writing()
        except Exception:  # noqa: BLE001 - a stream that already failed has nothing to close
            pass
        self._call.cancel()
        self._reader.cancel()
