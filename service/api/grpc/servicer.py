"""Triton's `GRPCInferenceService` over the pipeline: the gRPC twin of the /v2 endpoints (service/api/v2.py).

Each RPC is a thin translation: read the message, call the same protocol-free core REST calls (the pipeline's
admission, checks, deadline and batcher; the catalog's readiness and statistics; the loader), answer with the
message Triton answers (`ModelStreamInfer` runs each message as a `ModelInfer`). One request through either protocol
is the same request: the same limits, errors (their gRPC codes from service/errors.py), statistics and metrics
(`protocol="grpc"`). The RPCs vitserve does not serve (shared memory, trace and log settings) answer UNIMPLEMENTED
from the generated base class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api.common import check_key, model_label, track
from service.api.grpc import codec
from service.api.grpc.status import CallHeaders, answers
from service.api.models import index_entries
from service.api.v2 import SERVER_VERSION
from service.api.v2_codec import request_timeout_s
from service.api.v2_infer import V2Infer, wire_version
from service.api.v2_meta import (
    ModelStatisticsResponse,
    RepositoryIndexEntry,
    config_to_v2_json,
    model_metadata,
    model_statistics,
    server_metadata,
)
from service.api.v2_response import raw_outputs
from service.catalog import LoadedVersion
from service.errors import DeadlineExceeded, ServiceError
from service.loader import ModelStore
from service.pipeline import Pipeline

log = logging.getLogger("vitserve.grpc")

#: requests of one `ModelStreamInfer` stream in flight at most (the stream is not read past it)
STREAM_IN_FLIGHT = 256


def stream_error(request: Any, message: str) -> Any:
    """A streamed request's failure, in-band as Triton answers it (the stream stays open)."""
    return service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id))


def _version(text: str) -> int | None:
    """A message's version field ("" = the model's default version)."""
    return wire_version(text or None)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 / Triton gRPC inference service."""

    def __init__(self, pipeline: Pipeline, loader: ModelStore) -> None:
        self.pipeline, self.loader = pipeline, loader
        self.catalog, self.settings, self.metrics = pipeline.store, pipeline.settings, pipeline.metrics
        self.rest = V2Infer(pipeline)  # its per-model cache of input specs

    # -- health and metadata ------------------------------------------------------------------
    @answers
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's method names
        return service_pb2.ServerLiveResponse(live=self.catalog.live)

    @answers
    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=self.catalog.ready)

    @answers
    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        reason = self.pipeline.readiness(request.name, _version(request.version))
        return service_pb2.ModelReadyResponse(ready=reason is None)

    @answers
    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        meta = server_metadata(SERVER_VERSION)
        return service_pb2.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    @answers
    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        d = self.pipeline.describe(request.name, _version(request.version))
        return codec.model_metadata(model_metadata(request.name, d.versions, d.config))

    @answers
    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        d = self.pipeline.describe(request.name, _version(request.version))
        return codec.model_config(config_to_v2_json(d.config))

    @answers
    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        counts = await self.catalog.statistics(request.name or None, _version(request.version))
        return codec.model_statistics(ModelStatisticsResponse(model_stats=[model_statistics(c) for c in counts]))

    # -- repository ---------------------------------------------------------------------------
    @answers
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        entries = [RepositoryIndexEntry(**e) for e in index_entries(self.catalog)]
        return codec.repository_index([e for e in entries if e.state == "READY"] if request.ready else entries)

    @answers
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        check_key(CallHeaders(context), self.settings.api_key, required=True, what="repository control")
        await self.loader.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @answers
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        check_key(CallHeaders(context), self.settings.api_key, required=True, what="repository control")
        await self.loader.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- inference ----------------------------------------------------------------------------
    @answers
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self._infer(request, context)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        """Triton's streaming infer: one response per request, written as each completes (match them by `id`);
        a failed request answers `error_message` with its `id` and the stream goes on. Each request is the
        unary call's request (admission, limits, Triton's `timeout` parameter or the stream's deadline).

        Why it is bounded: at most `STREAM_IN_FLIGHT` requests of one stream are in flight; past that the
        stream is not read, so HTTP/2 flow control holds a client that sends without reading. The stream
        ending or cancelled withdraws what it still has in flight."""
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        writing = asyncio.Lock()  # one write at a time on the call
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: Any) -> None:
            try:
                try:
                    reply = service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request, context))
                except ServiceError as exc:
                    reply = stream_error(request, exc.message)
                except Exception:  # noqa: BLE001 - one request's failure answers it; the stream goes on
                    log.error("unhandled error in a streamed request", exc_info=True)
                    reply = stream_error(request, "internal error")
                async with writing:
                    await context.write(reply)
            finally:
                slots.release()

        try:
            while True:
                await slots.acquire()
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                task = asyncio.get_running_loop().create_task(answer(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _infer(self, request: Any, context: Any) -> Any:
        model = request.model_name
        async with track(self.metrics, model_label(model, self.catalog.model_names()), "v2_infer", "grpc"):
            start = time.monotonic()
            if self.settings.inference_api_key is not None:  # read the call's metadata only when a key is set
                check_key(CallHeaders(context), self.settings.inference_api_key, required=False, what="inference")
            version = _version(request.model_version)
            with self.pipeline.accept(model, version) as lv:  # 404 / UNAVAILABLE / RESOURCE_EXHAUSTED first
                return await self._accepted(lv, version is not None, request, context, start)

    async def _accepted(self, lv: LoadedVersion, pinned: bool, request: Any, context: Any, start: float) -> Any:
        """An admitted call: decode (REST's checks), deadline (the client's, or Triton's `timeout` when shorter),
        run through the batcher, answer raw."""
        pipeline = self.pipeline
        specs, _ = self.rest.inputs_of(lv.model, lv.entry)
        max_images = pipeline.max_images(lv)
        if request.raw_input_contents:  # views on the message's bytes: nothing to do off the loop
            parsed, arrays = codec.decode_infer_request(request, specs, max_images)
        else:  # typed contents are converted value by value: not on the event loop
            parsed, arrays = await self.catalog.run_blocking(codec.decode_infer_request, request, specs, max_images)
        limits = [s for s in (request_timeout_s(parsed), context.time_remaining()) if s is not None]
        if limits and min(limits) <= 0:
            lv.observer.on_expired(1)
            raise DeadlineExceeded("deadline passed before the request was queued")
        deadline = pipeline.deadline(min(limits) * 1000 if limits else None, start)
        out = await pipeline.run(lv, arrays[lv.entry.manifest.input_name], deadline, pinned=pinned)
        served = out.served.entry.manifest  # the version that computed it (a newer one after a swap)
        outputs = raw_outputs({served.output_name: out.outputs}, parsed, labels=served.labels)
        return codec.infer_response(out.model, str(out.version), request.id, outputs)
