"""What a front end answers itself, and what it forwards to the engine.

A front end answers the inference routes (the CPU-heavy part: parsed and preprocessed here) and its own
liveness/readiness (a draining front end is not ready). Everything else needs the engine's state and is rare:
it goes to the engine, whose app answers it in-process, so every endpoint answers from any front end as the
single process does. The head goes first and the body is read from the client only as the engine's app reads
it, so what the app refuses unread (an unknown path or model, no API key, a body over a route's limit) is
answered without reading the body; a client that leaves is the app's client leaving.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from re import Pattern

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.request_view import DisconnectWatch
from service.errors import exception_response
from service.http_protocol import DISCONNECT_WATCH
from service.workers.client import BodyDelivery, EngineClient

LOCAL_GET_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
#: the parts of an ASGI scope a forwarded request keeps (all picklable)
SCOPE_KEYS = ("http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "headers",
              "client", "server")


def has_body(scope: Scope) -> bool:
    """Whether the request has a body (HTTP/1.1: a Content-Length above 0, or a Transfer-Encoding)."""
    for key, value in scope.get("headers", ()):
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


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
        task = asyncio.current_task()
        assert task is not None
        gone = False

        def client_gone() -> None:  # stop waiting: the cancelled wait tells the engine (EngineClient.forward)
            nonlocal gone
            if not gone:
                gone = True
                task.cancel()

        connection: DisconnectWatch | None = scope.get(DISCONNECT_WATCH)
        if connection is not None:
            connection.watch_disconnect(client_gone)
        client = ClientBody(receive, client_gone) if has_body(scope) else None
        try:
            try:
                status, headers, body = await self.client.forward(
                    {k: scope[k] for k in SCOPE_KEYS if k in scope}, client)
            finally:  # answered (or failed): the client is no longer watched
                if client is not None:
                    client.close()
                if connection is not None:
                    connection.unwatch_disconnect(client_gone)
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:
                return  # nobody to answer
            raise
        except Exception as exc:  # noqa: BLE001 - outside FastAPI's handlers: answer as they would (engine gone: 503)
            response = await exception_response(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ClientBody:
    """A forwarded request's body, read from its client one piece per ask of the engine's app; then its client's
    departure is awaited too (uvicorn stops reading at a large body's end: a reset would go unnoticed)."""

    def __init__(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self.receive = receive
        self.on_gone = on_gone
        self._asks: deque[BodyDelivery] = deque()
        self._asked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wanted(self, deliver: BodyDelivery) -> None:
        self._asks.append(deliver)
        self._asked.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        complete = False
        try:
            while True:
                while not complete and not self._asks:
                    self._asked.clear()
                    await self._asked.wait()
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    break
                if not complete:
                    complete = not message.get("more_body", False)
                    self._asks.popleft()(message.get("body", b""), not complete)
        except Exception:  # noqa: BLE001 - the body limit refused the body (its 413 is sent): the client is done
            pass
        self.on_gone()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
