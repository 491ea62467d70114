"""The gRPC endpoint (KServe v2 / Triton `GRPCInferenceService` and grpc.health.v1), an optional extra.

`start_grpc(pipeline, loader)` serves it on `settings.grpc_port` (0: not at all) when the `grpc` extra is installed
(grpcio, grpcio-health-checking, tritonclient[grpc] for the generated messages and servicer base); without it the
server serves REST and logs one line saying how to turn gRPC on. Modules: `server.py` (grpc.aio server),
`servicer.py` (the RPCs), `codec.py` (messages <-> the REST v2 wire models), `status.py` (error codes),
`health.py`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.api.grpc.server import GrpcServer
    from service.loader import ModelStore
    from service.pipeline import Pipeline

log = logging.getLogger("vitserve.grpc")

#: what is missing when the extra is not installed
EXTRA_HINT = "pip install 'vitserve[grpc]'"


async def start_grpc(pipeline: Pipeline, loader: ModelStore) -> GrpcServer | None:
    """The started gRPC server, or None (port 0, or the extra missing: one log line says so)."""
    port = pipeline.settings.grpc_port
    if not port:
        log.info("gRPC is off (grpc_port is 0)")
        return None
    try:
        from service.api.grpc.server import GrpcServer
    except ImportError as exc:
        log.warning("gRPC is off: the grpc extra is not installed (%s; %s); serving REST only", exc.name, EXTRA_HINT)
        return None
    server = GrpcServer(pipeline, loader)
    await server.start()
    return server


__all__ = ["EXTRA_HINT", "start_grpc"]
