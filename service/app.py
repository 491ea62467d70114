"""`create_app(settings)`: the FastAPI application, wired once from one Settings object.

The lifespan owns start and stop: it starts the model store (models load and warm up in the
background; /v2/health/ready turns true when the initial load is done), and on shutdown turns
readiness false first, stops intake, drains accepted requests for up to `drain_timeout_s` and
closes the sessions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.common import BodyLimitMiddleware
from service.api.fast_path import DirectRoutes, FastPathMiddleware
from service.api.grpc import start_grpc
from service.api.routes import include
from service.api.system import SystemEndpoints
from service.api.v1 import V1Endpoints
from service.api.v2 import SERVER_VERSION, V2Endpoints
from service.errors import install_error_handlers
from service.gpu_metrics import register_gpu_metrics
from service.loader import ModelStore
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings
from service.ui import UiEndpoints

log = logging.getLogger("vitserve")

DESCRIPTION = """
Serves Vision Transformer variants exported to ONNX (a Triton-compatible model repository) with
ONNX Runtime, dynamic batching and Prometheus metrics.

* `/v1` — classify an image (multipart, raw image body or base64 JSON), compare models, list models.
* `/v2` — the Open Inference Protocol (KServe / Triton REST), incl. the binary tensor extension.
* `/metrics` — Prometheus.

Errors are JSON `{"error": "..."}`: 400 bad input, 401 missing API key, 404 unknown model,
413 too large, 415 unsupported media type, 503 overloaded (Retry-After) or not ready, 504 deadline.
"""


class ServiceApp(FastAPI):
    """FastAPI whose hot inference routes are dispatched before its middleware stack (service/api/fast_path.py)."""

    entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.entry is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it (`request.app`)
        await self.entry(scope, receive, send)


def create_app(settings: Settings, *, wait_for_models: bool = False, store: ModelStore | None = None) -> ServiceApp:
    """Build the app. `wait_for_models` makes startup block until the initial load is done (tests).
    `store`: serve this one (a front end's mirror of the engine's models, service/workers/); such an app serves no
    gRPC (the engine, which owns the models, does: service/workers/engine.py).

    Each model's runtime comes from the runtimes table (service/runtimes) by its config.pbtxt
    `backend`/`platform`; `settings.runtime_modules` names modules that register more runtimes."""
    serves_grpc = store is None
    if store is None:
        metrics = Metrics()
        register_gpu_metrics(metrics.registry)  # Triton's nv_gpu_* series; absent without a GPU
        store = ModelStore(settings, metrics)
    metrics = store.metrics
    pipeline = Pipeline(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.start(wait=wait_for_models)
        grpc_server = await start_grpc(pipeline, store) if serves_grpc else None
        try:
            yield
        finally:
            log.info("shutting down: readiness off, draining for up to %.1fs", settings.drain_timeout_s)
            if grpc_server is not None:  # accepted calls answered first, then the gRPC server stops
                store.begin_drain()
                await store.drained()
                await grpc_server.stop()
            await store.shutdown()
            log.info("shutdown complete")

    app = ServiceApp(title="vitserve", version=SERVER_VERSION, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.pipeline = pipeline
    app.state.metrics = metrics
    install_error_handlers(app)
    # the endpoint classes' flat route tables, in this order (OpenAPI lists them so)
    hot = include(app, V1Endpoints(pipeline).routes(), prefix="/v1", tags=["v1"])
    hot += include(app, V2Endpoints(pipeline, store).routes(), prefix="/v2", tags=["v2"])
    include(app, SystemEndpoints(store).routes(), tags=["system"])
    include(app, UiEndpoints().routes())  # /ui: the comparison page (not in the OpenAPI document)
    # the same endpoints without ASGI, for vitserve's HTTP protocol (`guarded_protocol(settings, direct=...)`)
    app.state.direct_routes = DirectRoutes(hot, settings.max_body_bytes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # the hot routes first, under the same body limit; everything else through FastAPI's stack
    app.entry = FastPathMiddleware(partial(FastAPI.__call__, app), hot, max_body_bytes=settings.max_body_bytes)
    return app
