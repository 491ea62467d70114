"""The hot routes served straight from vitserve's HTTP protocol, without ASGI.

Under ASGI an inference request passes uvicorn's proxy-headers middleware, the app's entry, the
fast path, the body limit, a Starlette `Request`, a `Response` sent as two ASGI messages, and
uvicorn's `send`, which checks and assembles the head: about a third of the event loop's CPU per
request on a small model. Here the protocol (service/http_protocol.py) hands a hot request's uvicorn
`RequestResponseCycle` to `DirectRoutes.serve`, which calls the same endpoint as the fast path with a
`RequestView` over the cycle and writes the answer itself. The cycle still buffers the body, pauses
and resumes reading, and queues pipelined requests; what this module does in place of uvicorn's
`receive`/`send` it does as they do (100-continue before the first body read, flow control, the
date header, `connection: close` when not kept alive, the cycle completed and the next pipelined
request started), and what it does in place of the ASGI layers gives their answers byte for byte
(the body limit's refusals, the error table's JSON, the endpoint's `Response` head and body).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from service.api.common import declared_length, length_refusal, limit_error, streamed_refusal
from service.api.fast_path import HotEndpoint, HotRoutes
from service.api.request_view import RequestHeaders
from service.errors import PayloadTooLarge, exception_response
from service.http_protocol import GuardedHttpToolsProtocol

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

    __slots__ = ("headers", "query_string", "connection", "_cycle", "_limit", "_received", "_body", "_streamed",
                 "refused")

    def __init__(self, connection: GuardedHttpToolsProtocol, cycle: RequestResponseCycle, limit: int | None) -> None:
        scope = cycle.scope
        self.headers: Headers = RequestHeaders(cast("list[tuple[bytes, bytes]]", scope["headers"]))
        self.query_string: bytes = scope["query_string"]
        self.connection = connection
        self._cycle = cycle
        self._limit = limit
        self._received = 0
        self._body: bytes | None = None
        self._streamed = False  # read by `stream` (not kept): `body` cannot read it again
        self.refused = False  # the body streamed past the limit: the answer is the body limit's 413

    async def _receive(self) -> tuple[bytes, bool]:
        """The next piece of the body and whether more follows; ClientDisconnect when the client went away."""
        cycle = self._cycle
        if cycle.waiting_for_100_continue and not self.connection.transport.is_closing():
            self.connection.transport.write(CONTINUE)
            cycle.waiting_for_100_continue = False
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
            try:
                response = await endpoint(request, **params)
            except Exception as exc:  # noqa: BLE001 - the same table as FastAPI's handlers
                response = await exception_response(Request(cast(Scope, cycle.scope)), exc)
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
