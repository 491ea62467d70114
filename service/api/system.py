"""/metrics (Prometheus text format) and the root page."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.catalog import Catalog


def register_system(app: FastAPI, store: Catalog) -> None:
    @app.get("/metrics", summary="Prometheus metrics", tags=["system"], response_class=Response)
    async def metrics() -> Response:
        return Response(store.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", summary="Service index", tags=["system"])
    async def index() -> dict[str, object]:
        return {
            "service": "vitserve",
            "ready": store.ready,
            "models": list(store.model_names()),
            "docs": "/docs",
            "endpoints": ["/v1/models", "/v1/models/{model}/classify", "/v1/compare", "/v2", "/metrics"],
        }
