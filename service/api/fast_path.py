"""The one fast path: the hot inference routes (v2 infer, v1 classify) served before FastAPI's stack.

On a small model the service is bound by event-loop CPU per request. FastAPI's exception, telemetry and
body-limit layers, its router (a linear regex scan over every route) and its per-call dependency solving
cost about as much as the inference endpoint itself. The hot endpoints take only path parameters and a
`RequestView` (service/api/request_view.py) and return a `Response`; one table (`HotRoutes`) matches them
and one step (`answer`) calls them, with errors through the same table (`service.errors.exception_response`)
as under FastAPI and the body limit's answers (`BodyLimitMiddleware`: 413 from Content-Length, or while a
body without one streams). FastAPI keeps the routes for OpenAPI and serves every other request.

The path has two doors, whichever way the request arrived:

- from vitserve's HTTP protocol (service/http_protocol.py, `DirectRoutes`): no ASGI at all. Under ASGI an
  inference request passes uvicorn's proxy-headers middleware, the app's entry, the body limit, a Starlette
  `Request`, a `Response` sent as two ASGI messages, and uvicorn's `send`, which checks and assembles the head:
  about a third of the event loop's CPU per request on a small model. Here the protocol hands a hot request's
  uvicorn `RequestResponseCycle` to `DirectRoutes.serve`, which calls the endpoint with a `RequestView` over
  the cycle and writes the answer itself. The cycle still buffers the body, pauses and resumes reading (a body
  of declared length is collected whole instead: `GuardedHttpToolsProtocol.collect_body`), and queues
  pipelined requests; what this module does in place of uvicorn's `receive`/`send` it does as they do
  (100-continue before the first body read, flow control, the date header, `connection: close` when not kept
  alive, the cycle completed and the next pipelined request started), and what it does in place of the ASGI
  layers gives their answers byte for byte (the body limit's refusals, the error table's JSON, the
  endpoint's `Response` head and body);
- from ASGI (`FastPathMiddleware`, the application's entry: `service.app.ServiceApp`), for any other ASGI
  server or with `VITSERVE_DIRECT_ROUTES` off: the matched requests skip FastAPI's middleware and router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, cast

from fastapi.routing import APIRoute, APIRouter
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from service.api.common import BodyLimitMiddleware, declared_length, length_refusal, limit_error, streamed_refusal
from service.api.request_view import AsgiRequest, DisconnectWatch, RequestHeaders, RequestView
from service.errors import PayloadTooLarge, exception_response
from service.http_protocol import GuardedHttpToolsProtocol

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


async def answer(endpoint: HotEndpoint, view: RequestView, params: dict[str, Any], request: Request) -> Response:
    """The endpoint's response, or the error table's for what it raised (`request`: what the table reads)."""
    try:
        return await endpoint(view, **params)
    except Exception as exc:  # noqa: BLE001 - the same table as FastAPI's handlers
        return await exception_response(request, exc)


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
        response = await answer(scope["endpoint"], AsgiRequest(request), scope["path_params"], request)
        await response(scope, receive, send)


def hot_routes(router: APIRouter, endpoints: Mapping[Callable[..., Any], HotEndpoint]) -> HotRoutes:
    """The router's POST routes of these FastAPI endpoints (declared once, with the router's prefix), each
    served by its `RequestView` endpoint."""
    return HotRoutes([(r, endpoints[r.endpoint]) for r in router.routes
                      if isinstance(r, APIRoute) and r.endpoint in endpoints and "POST" in (r.methods or ())])


# --- the protocol's door: no ASGI ------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DirectRoutes:
    """The hot routes, served from the protocol under the body limit `max_body_bytes`."""

    def __init__(self, routes: HotRoutes, max_body_bytes: int) -> None:
        self.routes = routes
        self.max_body_bytes = max_body_bytes

    def serve(self, connection: GuardedHttpToolsProtocol, cycle: RequestResponseCycle
              ) -> Coroutine[Any, Any, None] | None:
        """The coroutine answering this request, or None when it is not a hot route (ASGI answers it)."""
        hit = self.routes.match(cycle.scope)
        if hit is None:
            return None
        return _serve(connection, cycle, hit[0], hit[1], self.max_body_bytes)


class DirectRequest:
    """`RequestView` over a uvicorn request cycle; reading the body does what uvicorn's `receive` does.

    `limit`: count the body against this many bytes as it arrives (a body without Content-Length;
    one with it was checked before and the parser delivers no more than it declares)."""

    __slots__ = ("headers", "query_string", "connection", "_protocol", "_cycle", "_limit", "_received", "_body",
                 "_streamed", "refused")

    def __init__(self, connection: GuardedHttpToolsProtocol, cycle: RequestResponseCycle, limit: int | None) -> None:
        scope = cycle.scope
        self.headers: Headers = RequestHeaders(cast("list[tuple[bytes, bytes]]", scope["headers"]))
        self.query_string: bytes = scope["query_string"]
        self.connection: DisconnectWatch | None = connection
        self._protocol = connection
        self._cycle = cycle
        self._limit = limit
        self._received = 0
        self._body: bytes | None = None
        self._streamed = False  # read by `stream` (not kept): `body` cannot read it again
        self.refused = False  # the body streamed past the limit: the answer is the body limit's 413

    def _continue(self) -> None:
        """100-continue before the first read of the body, as uvicorn's `receive`."""
        cycle = self._cycle
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(CONTINUE)
            cycle.waiting_for_100_continue = False

    async def _whole(self) -> bytes:
        """A body of declared length, whole, collected by the protocol as it arrives (no hand-off per piece:
        `GuardedHttpToolsProtocol.collect_body`); ClientDisconnect when the client went away."""
        cycle = self._cycle
        self._continue()
        try:
            if cycle.more_body and not cycle.disconnected and not cycle.response_complete:
                self._protocol.collect_body(cycle)
                while cycle.more_body and not cycle.disconnected and not cycle.response_complete:
                    await cycle.message_event.wait()
                    cycle.message_event.clear()
        finally:
            body = self._protocol.collected(cycle)
        if cycle.disconnected or cycle.response_complete:
            raise ClientDisconnect()
        return body

    async def _receive(self) -> tuple[bytes, bool]:
        """The next piece of the body and whether more follows; ClientDisconnect when the client went away."""
        cycle = self._cycle
        self._continue()
        if not cycle.disconnected and not cycle.response_complete:
            cycle.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected or cycle.response_complete:
            raise ClientDisconnect()
        chunk, more = bytes(cycle.body), cycle.more_body
        cycle.body = bytearray()
        if self._limit is not None:
            self._received += len(chunk)
            if self._received > self._limit:
                self.refused = True
                raise PayloadTooLarge(streamed_refusal(self._limit))
        return chunk, more

    async def body(self) -> bytes:
        if self._body is None:
            if self._streamed:
                raise RuntimeError("Stream consumed")  # as Starlette's Request
            if self._limit is None:  # declared length: checked against the limit at its head
                self._body = await self._whole()
                return self._body
            chunk, more = await self._receive()
            if more:
                chunks = [chunk]
                while more:
                    chunk, more = await self._receive()
                    chunks.append(chunk)
                chunk = b"".join(chunks)
            self._body = chunk
        return self._body

    async def stream(self) -> AsyncIterator[bytes]:
        if self._body is not None:
            yield self._body
            return
        if self._streamed:  # as Starlette's Request: the body has been consumed (never wait for more)
            raise RuntimeError("Stream consumed")
        self._streamed = more = True
        while more:
            chunk, more = await self._receive()
            if chunk:
                yield chunk

    async def wait_disconnected(self) -> None:  # pragma: no cover - the connection reports it (`connection`)
        raise AssertionError("a direct request's connection reports its loss")


async def _serve(connection: GuardedHttpToolsProtocol, cycle: RequestResponseCycle, endpoint: HotEndpoint,
                 params: dict[str, Any], max_body_bytes: int) -> None:
    """Answer one hot request as the ASGI path would (body limit, endpoint, error table), in one write."""
    try:
        length = declared_length(cycle.scope["headers"])
        refusal = None if length is None else length_refusal(length, max_body_bytes)
        if refusal is not None:  # before reading a byte (and before 100-continue), as BodyLimitMiddleware
            status = refusal[0]
            headers, body = limit_error(*refusal)
        else:
            request = DirectRequest(connection, cycle, max_body_bytes if length is None else None)
            response = await answer(endpoint, request, params, Request(cast(Scope, cycle.scope)))
            if request.refused:  # what the endpoint answered after the body went past the limit is dropped
                status = 413
                headers, body = limit_error(413, streamed_refusal(max_body_bytes))
            else:
                # a Response renders its content to bytes (starlette types the field wider)
                status, headers, body = response.status_code, response.raw_headers, cast(bytes, response.body)
        await _respond(connection, cycle, status, headers, body)
    except BaseException as exc:  # as uvicorn's `run_asgi`: log, then a 500 if nothing was sent, else close
        connection.logger.error("Exception in ASGI application\n", exc_info=exc)
        if not cycle.response_started:
            await _respond(connection, cycle, 500, [(b"content-type", b"text/plain; charset=utf-8"),
                                                    (b"content-length", b"21"), (b"connection", b"close")],
                           b"Internal Server Error")
        else:
            connection.transport.close()
    finally:
        cycle.on_response = lambda: None


async def _respond(connection: GuardedHttpToolsProtocol, cycle: RequestResponseCycle, status: int,
                   headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Write the status line, uvicorn's default headers, `headers` and `body` in one write and complete the
    cycle, as uvicorn's `send` does for `http.response.start` and one `http.response.body`."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected or connection.transport.is_closing():  # the client left: nobody reads the answer
        return
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.access_log:
        scope = cycle.scope
        cycle.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                 get_path_with_query_string(scope), scope["http_version"], status)
    head = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        head += (name, b": ", value, b"\r\n")
    names, values, close = [], [], False
    for name, value in headers:
        name = name.lower()
        if name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
            cycle.keep_alive = False
            close = True
        names.append(name)
        values.append(value)
        head += (name, b": ", value, b"\r\n")
    if HEADER_RE.search(b"-".join(names)) or HEADER_VALUE_RE.search(b"\t".join(values)):
        raise RuntimeError("Invalid HTTP header name or value.")
    if not cycle.keep_alive and not close:
        head.append(b"connection: close\r\n")
    head += (b"\r\n", body)
    transport = connection.transport
    transport.write(b"".join(head))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
