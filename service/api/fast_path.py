"""The inference routes served straight from ASGI, before FastAPI's middleware stack and router.

On a small model the service is bound by event-loop CPU per request. FastAPI's exception,
telemetry and body-limit layers, its router (a linear regex scan over every route) and its
per-call dependency solving cost about as much as the inference endpoint itself. The hot routes'
endpoints take only path parameters and a `RequestView` (service/api/request_view.py) and return a
`Response`, so the application (`service.app.ServiceApp`) hands every request to this dispatcher
first, which calls them directly; FastAPI keeps the routes for OpenAPI and serves every other request.
Errors go through the same table (`service.errors.exception_response`) as under FastAPI, and the
body limit (`BodyLimitMiddleware`: 413 from Content-Length, or while a body without one streams)
wraps the hot routes as it wraps the rest of the app. The same table (`HotRoutes`) serves the
direct path (service/api/direct.py), which calls the same endpoints without ASGI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.common import BodyLimitMiddleware
from service.api.request_view import AsgiRequest
from service.errors import exception_response

#: a hot route's endpoint: `await endpoint(request_view, **path_params)`
HotEndpoint = Callable[..., Awaitable[Response]]


class HotRoutes:
    """POST routes matched by path (below the scope's `root_path`) to an endpoint and its path parameters."""

    def __init__(self, routes: Sequence[tuple[APIRoute, HotEndpoint]]) -> None:
        self.routes = [(route, endpoint) for route, endpoint in routes]
        self._table = [(route.path_regex, route.param_convertors, endpoint) for route, endpoint in routes]

    @property
    def api_routes(self) -> list[APIRoute]:
        return [route for route, _ in self.routes]

    def match(self, scope: Mapping[str, Any]) -> tuple[HotEndpoint, dict[str, Any]] | None:
        if scope["method"] != "POST":
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for regex, convertors, endpoint in self._table:
            match = regex.match(path)
            if match is not None:
                return endpoint, {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
        return None

    def __add__(self, other: HotRoutes) -> HotRoutes:
        return HotRoutes([*self.routes, *other.routes])


class FastPathMiddleware:
    """Dispatch `POST` requests whose path matches one of `routes` straight to the route's endpoint.

    `max_body_bytes`: the body limit for the matched requests (None: the caller applies one)."""

    def __init__(self, app: ASGIApp, routes: HotRoutes, max_body_bytes: int | None = None) -> None:
        self.app = app
        self.routes = routes
        self._hot: ASGIApp = BodyLimitMiddleware(self._dispatch, max_body_bytes) if max_body_bytes else self._dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hit = self.routes.match(scope)
            if hit is not None:
                scope["endpoint"], scope["path_params"] = hit
                await self._hot(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope["endpoint"](AsgiRequest(request), **scope["path_params"])
        except Exception as exc:  # noqa: BLE001 - the same table as FastAPI's handlers
            response = await exception_response(request, exc)
        await response(scope, receive, send)


def hot_routes(router: APIRouter, endpoints: Mapping[Callable[..., Any], HotEndpoint]) -> HotRoutes:
    """The router's POST routes of these FastAPI endpoints (declared once, with the router's prefix), each
    served by its `RequestView` endpoint."""
    return HotRoutes([(r, endpoints[r.endpoint]) for r in router.routes
                      if isinstance(r, APIRoute) and r.endpoint in endpoints and "POST" in (r.methods or ())])
