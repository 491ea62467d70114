"""What a front end answers itself, and what it forwards to the engine.

A front end answers the inference routes (`/v1/models/{m}/classify`, `/v2/models/{m}[/versions/{v}]/
infer`: the CPU-heavy part of the service, parsed and preprocessed here) and liveness/readiness (its
own: a draining front end is not ready). Everything else (model lists and metadata, statistics,
repository index/load/unload, /metrics, /v1/compare, OpenAPI and docs) needs the engine's state and
is rare: the whole request goes to the engine over the control connection and its app answers it
in-process, so every endpoint answers from any front end exactly as the single-process server does.
"""

from __future__ import annotations

from collections.abc import Sequence
from re import Pattern

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import exception_response
from service.workers.client import EngineClient

LOCAL_GET_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
#: the parts of an ASGI scope a forwarded request keeps (all picklable)
SCOPE_KEYS = ("http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "headers",
              "client", "server")


class ForwardMiddleware:
    """Hot routes and health to the local app; every other HTTP request to the engine."""

    def __init__(self, app: ASGIApp, client: EngineClient, hot_routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.client = client
        self.hot: list[Pattern[str]] = [route.path_regex for route in hot_routes]

    def _local(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if scope["method"] == "POST":
            return any(regex.match(path) for regex in self.hot)
        return scope["method"] in ("GET", "HEAD") and path in LOCAL_GET_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._local(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            status, headers, body = await self.client.forward(
                {k: scope[k] for k in SCOPE_KEYS if k in scope}, b"".join(chunks))
        except Exception as exc:  # noqa: BLE001 - outside FastAPI's handlers: answer as they would (engine gone: 503)
            response = await exception_response(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
