"""The grpc.aio server: on the process's asyncio loop, beside the HTTP server, over the same pipeline.

Why grpc.aio on the same loop: a call's handler awaits the same batcher futures as a REST request (no thread hop,
no second loop), and gRPC's C core does the HTTP/2 framing and protobuf parsing. Its bounds come from the REST
settings: a message over `max_body_bytes` is refused by gRPC itself (RESOURCE_EXHAUSTED) before it is parsed.
Stop: the catalog's drain has already refused newcomers (UNAVAILABLE) and answered the accepted calls; `stop`
ends health watches and gives what is still in flight the drain timeout to finish.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from service.api.grpc.health import HealthServicer
from service.api.grpc.servicer import InferenceServicer
from service.loader import ModelStore
from service.pipeline import Pipeline

log = logging.getLogger("vitserve.grpc")


def bind_address(host: str, port: int) -> str:
    """host:port as gRPC reads it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """The gRPC endpoint of one process: the inference service and grpc.health.v1 on `settings.grpc_port`."""

    def __init__(self, pipeline: Pipeline, loader: ModelStore) -> None:
        self.settings = pipeline.settings
        self.health = HealthServicer(pipeline.store)
        self.inference = InferenceServicer(pipeline, loader)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; the port bound. A port already in use fails the start, as the HTTP port's does."""
        settings = self.settings
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on the port is an error, not a silent share
            ("grpc.max_concurrent_streams", 1024),
        ])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.inference, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = bind_address(settings.host, settings.grpc_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot bind the gRPC port {address}: {exc}") from None
        if not port:
            raise OSError(f"cannot bind the gRPC port {address}")
        await server.start()
        self.server, self.port = server, port
        log.info("gRPC (KServe v2 / Triton GRPCInferenceService, grpc.health.v1) on %s",
                 bind_address(settings.host, port))
        return port

    async def stop(self) -> None:
        """Stop: end the health watches, finish the calls in flight for up to the drain timeout."""
        self.health.stopping.set()
        if self.server is not None:
            await self.server.stop(self.settings.drain_timeout_s)
            self.server = None
