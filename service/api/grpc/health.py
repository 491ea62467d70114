"""grpc.health.v1 (what Kubernetes `grpc:` probes call): answered from the catalog's readiness at each call.

Why not grpc_health's stateful servicer: readiness is the catalog's to say (models loading, at least one serving,
draining); reading it at each Check cannot go stale. The overall service ("") and `inference.GRPCInferenceService`
are SERVING exactly when REST's /v2/health/ready answers 200 (NOT_SERVING while loading and from the first moment
of a drain); a model's name is SERVING while that model serves; any other name is NOT_FOUND, as the spec says.
Watch sends the status, then each change (checked every `WATCH_INTERVAL_S`), until the server stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.catalog import Catalog

INFERENCE_SERVICE = "inference.GRPCInferenceService"
WATCH_INTERVAL_S = 0.5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.stopping = asyncio.Event()
        self.not_ready = False

    def readiness_off(self) -> None:
        """NOT_SERVING from now on (an `--http-workers` front end started draining: the server is going)."""
        self.not_ready = True

    def status(self, service: str) -> Any:
        """SERVING / NOT_SERVING of `service`, SERVICE_UNKNOWN for a name that is neither a service nor a model."""
        if service in ("", INFERENCE_SERVICE):
            return SERVING if self.catalog.ready and not self.not_ready else NOT_SERVING
        if self.catalog.find(service) is None:
            return SERVICE_UNKNOWN
        return SERVING if self.catalog.is_model_ready(service) else NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's method name
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        last = None
        while not self.stopping.is_set():
            status = self.status(request.service)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            try:
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL_S)
            except TimeoutError:
                pass
