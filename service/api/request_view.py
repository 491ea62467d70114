"""What the inference endpoints read of a request, whichever way it was served.

The hot endpoints (v2 infer, v1 classify) read only headers, the query string, the body and
whether the client is still there. `RequestView` is that much: `AsgiRequest` gives it over an ASGI
request (FastAPI's routes, the fast path, any ASGI server), service/api/fast_path.py over uvicorn's
request cycle (vitserve's HTTP protocol, no ASGI), so one endpoint function serves both paths.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from service.http_protocol import DISCONNECT_WATCH


class RequestHeaders(Headers):
    """Starlette's `Headers` whose `get` finds an absent header without raising and catching KeyError (the
    hot endpoints look up several headers a request usually lacks); the first of repeated headers, as `get`."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:  # uvicorn gives a list (typed as an Iterable)
        super().__init__(raw=raw)
        self._raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        wanted = key.lower().encode("latin-1")
        for name, value in self._raw:
            if name == wanted:
                return value.decode("latin-1")
        return default


class DisconnectWatch(Protocol):
    """A connection that calls back when it is lost (service/http_protocol.py)."""

    def watch_disconnect(self, callback: Callable[[], None]) -> None: ...

    def unwatch_disconnect(self, callback: Callable[[], None]) -> None: ...


class RequestView(Protocol):
    """A request as the hot endpoints see it. `connection` is None where the server does not say when a
    connection is lost; `wait_disconnected` then returns when the client has gone (after the body)."""

    headers: Headers
    query_string: bytes
    connection: DisconnectWatch | None

    async def body(self) -> bytes: ...

    def stream(self) -> AsyncIterator[bytes]: ...

    async def wait_disconnected(self) -> None: ...


class AsgiRequest:
    """`RequestView` of a Starlette request (the body read once, as Starlette reads it)."""

    __slots__ = ("request", "headers", "query_string", "connection")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.headers: Headers = RequestHeaders(request.scope["headers"])
        self.query_string: bytes = request.scope.get("query_string", b"")
        self.connection: DisconnectWatch | None = request.scope.get(DISCONNECT_WATCH)

    async def body(self) -> bytes:
        return await self.request.body()

    def stream(self) -> AsyncIterator[bytes]:
        return self.request.stream()

    async def wait_disconnected(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                return


async def parse_multipart(request: RequestView, *, max_files: int, max_fields: int) -> FormData:
    """The multipart form of a request, parsed as Starlette's `Request.form` parses it (its parser, its limits)."""
    return await MultiPartParser(request.headers, request.stream(),  # type: ignore[arg-type]  # any RequestHeaders/Headers
                                 max_files=max_files, max_fields=max_fields).parse()
