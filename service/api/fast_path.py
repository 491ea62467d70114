"""The inference routes served straight from ASGI, before FastAPI's middleware stack and router.

On a small model the service is bound by event-loop CPU per request. FastAPI's exception,
telemetry and body-limit layers, its router (a linear regex scan over every route) and its
per-call dependency solving cost about as much as the inference endpoint itself. The hot routes'
endpoints take only path parameters and the `Request` and return a `Response`, so the application
(`service.app.ServiceApp`) hands every request to this dispatcher first, which calls the very same
endpoint functions directly; FastAPI keeps the routes for OpenAPI and serves every other request.
Errors go through the same table (`service.errors.exception_response`) as under FastAPI, and the
body limit (`BodyLimitMiddleware`: 413 from Content-Length, or while a body without one streams)
wraps the hot routes as it wraps the rest of the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.common import BodyLimitMiddleware
from service.errors import exception_response

Endpoint = Callable[..., Awaitable[Response]]


class FastPathMiddleware:
    """Dispatch `POST` requests whose path matches one of `routes` straight to the route's endpoint.

    `max_body_bytes`: the body limit for the matched requests (None: the caller applies one)."""

    def __init__(self, app: ASGIApp, routes: Sequence[APIRoute], max_body_bytes: int | None = None) -> None:
        self.app = app
        self.routes = [(route.path_regex, route.param_convertors, route.endpoint) for route in routes]
        self._hot: ASGIApp = BodyLimitMiddleware(self._dispatch, max_body_bytes) if max_body_bytes else self._dispatch

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
                scope["path_params"] = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
                scope["endpoint"] = endpoint
                await self._hot(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope["endpoint"](request=request, **scope["path_params"])
        except Exception as exc:  # noqa: BLE001 - the same table as FastAPI's handlers
            response = await exception_response(request, exc)
        await response(scope, receive, send)


def fast_routes(router: APIRouter, *endpoints: Endpoint) -> list[APIRoute]:
    """The router's POST routes of these endpoints (declared once, with the router's prefix)."""
    return [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint in endpoints and "POST" in r.methods]
