"""The inference routes served straight from ASGI, before FastAPI's router.

On a small model the service is bound by event-loop CPU per request. FastAPI's exception and
exit-stack middleware, its router (a linear regex scan over every route) and its per-call
dependency solving cost a large share of that (profiled under concurrent v2 requests; see
BENCHMARKS.md). The hot routes' endpoints take only path
parameters and the `Request` and return a `Response`, so this middleware can call the very same
endpoint functions directly; FastAPI keeps the routes for OpenAPI and for every other method.
Errors go through the same table (`service.errors.exception_response`) as under FastAPI.
Sits inside the body-limit middleware, so the 413 checks still come first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import exception_response

Endpoint = Callable[..., Awaitable[Response]]


class FastPathMiddleware:
    """Dispatch `POST` requests whose path matches one of `routes` straight to the route's endpoint."""

    def __init__(self, app: ASGIApp, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.routes = [(route.path_regex, route.param_convertors, route.endpoint) for route in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            for regex, convertors, endpoint in self.routes:
                match = regex.match(path)
                if match is None:
                    continue
                params: dict[str, Any] = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
                scope["path_params"] = params
                request = Request(scope, receive, send)
                try:
                    response = await endpoint(request=request, **params)
                except Exception as exc:  # noqa: BLE001 - the same table as FastAPI's handlers
                    response = await exception_response(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def fast_routes(router: APIRouter, *endpoints: Endpoint) -> list[APIRoute]:
    """The router's POST routes of these endpoints (declared once, with the router's prefix)."""
    return [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint in endpoints and "POST" in r.methods]
