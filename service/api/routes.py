"""One flat route table per endpoint class, registered on the app in one place.

An endpoint class (v1, v2, system) lists its routes as `Route` rows: method, path, the method that answers,
FastAPI's documentation options and, for a hot route, the `RequestView` endpoint the fast path calls.
FastAPI keeps every route (OpenAPI, and every request the fast path does not take).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.api.fast_path import HotEndpoint, HotRoutes


@dataclass(frozen=True)
class Route:
    """One route: `endpoint` answers `method path`; `options` go to FastAPI as they are; `hot`: the same
    answer from a `RequestView` and the path parameters (service/api/fast_path.py)."""

    method: str
    path: str
    endpoint: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    hot: HotEndpoint | None = None


def route(method: str, path: str, endpoint: Callable[..., Any], *, hot: HotEndpoint | None = None,
          **options: Any) -> Route:
    return Route(method, path, endpoint, options, hot)


def include(app: FastAPI, routes: Sequence[Route], *, prefix: str = "", tags: list[str] | None = None) -> HotRoutes:
    """Declare `routes` on `app` (in table order, under `prefix` and `tags`); return the hot ones."""
    router = APIRouter(prefix=prefix, tags=list(tags or []))
    hot: list[tuple[APIRoute, HotEndpoint]] = []
    for r in routes:
        router.add_api_route(r.path, r.endpoint, methods=[r.method], **r.options)
        if r.hot is not None:
            api_route = router.routes[-1]
            assert isinstance(api_route, APIRoute)
            hot.append((api_route, r.hot))
    app.include_router(router)
    return HotRoutes(hot)
