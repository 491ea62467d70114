"""/metrics (Prometheus text format) and the root page."""

from __future__ import annotations

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.routes import Route, route
from service.catalog import Catalog


class SystemEndpoints:
    """The routes outside the two protocols."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def routes(self) -> list[Route]:
        return [
            route("GET", "/metrics", self.metrics, summary="Prometheus metrics", response_class=Response),
            route("GET", "/", self.index, summary="Service index"),
        ]

    async def metrics(self) -> Response:
        return Response(await self.catalog.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def index(self) -> dict[str, object]:
        return {
            "service": "vitserve",
            "ready": self.catalog.ready,
            "models": list(self.catalog.model_names()),
            "docs": "/docs",
            "endpoints": ["/v1/models", "/v1/models/{model}/classify", "/v1/compare", "/v2", "/metrics"],
        }
