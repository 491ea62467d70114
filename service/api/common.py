"""Pieces every router shares: body limit middleware, API-key check, request metrics, disconnects.

Only this layer knows about HTTP; it turns requests into pipeline calls and lets
`service.errors` turn domain errors into responses.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
from collections.abc import Awaitable, Collection, Iterable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.request_view import RequestView
from service.errors import (
    ClientClosedRequest,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    validation_message,
)
from service.metrics import Metrics

T = TypeVar("T")
UNKNOWN_MODEL_LABEL = "_unknown"


class BodyLimitMiddleware:
    """413 from Content-Length before reading anything, and again while streaming a body without one.

    A body with a Content-Length within the limit is passed through untouched: the HTTP parser
    delivers exactly the declared bytes (more would be the next request), so only a body without
    one (chunked) needs counting as it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope.get("headers", ()))
        if length is not None:
            refusal = length_refusal(length, self.max_bytes)
            if refusal is not None:
                await _send_error(send, *refusal)
                return
            await self.app(scope, receive, send)
            return
        received = 0
        limit = self.max_bytes
        started = refused = False

        async def limited() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # answer 413 here, whoever reads the body (FastAPI's own body parsing would turn the
                    # exception into 400 "error parsing the body"); what the app answers after is dropped
                    if not started and not refused:
                        refused = True
                        await _send_error(send, 413, streamed_refusal(limit))
                    raise PayloadTooLarge(streamed_refusal(limit))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except PayloadTooLarge:
            if not refused:
                raise


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The request's Content-Length header (the last one), None without one."""
    length = None
    for key, value in headers:
        if key == b"content-length":
            length = value
    return length


def length_refusal(length: bytes, max_bytes: int) -> tuple[int, str] | None:
    """(status, message) refusing a declared Content-Length (400 invalid, 413 too large); None: within the limit."""
    try:
        declared = int(length)
    except ValueError:
        return 400, "invalid Content-Length header"
    if declared < 0:
        return 400, "invalid Content-Length header"
    if declared > max_bytes:
        return 413, f"request body of {declared} bytes exceeds the limit of {max_bytes}"
    return None


def streamed_refusal(limit: int) -> str:
    """The 413 message for a body without Content-Length that streamed past `limit`."""
    return f"request body exceeds the limit of {limit} bytes"


def limit_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of the body limit's refusals (the connection closes after them)."""
    body = json.dumps({"error": message}).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")], body


async def _send_error(send: Send, status: int, message: str) -> None:
    headers, body = limit_error(status, message)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Headed(Protocol):
    @property
    def headers(self) -> Headers: ...


def presented_key(request: _Headed) -> str | None:
    auth = request.headers.get("authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def check_key(request: _Headed, key: SecretStr | None, *, required: bool, what: str) -> None:
    """Constant-time API key check. `required` with no key configured means the endpoint is closed."""
    if key is None:
        if required:
            raise Unauthorized(f"{what} is disabled: the server has no API key configured")
        return
    given = presented_key(request)
    if given is None or not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise Unauthorized(f"{what} needs a valid API key (Authorization: Bearer <key> or X-API-Key)")


def model_label(model: str, known: Collection[str]) -> str:
    """Metric label for a model from a URL: unknown names collapse to one value (bounded cardinality)."""
    return model if model in known else UNKNOWN_MODEL_LABEL


class track:  # noqa: N801 - used as `async with track(...)`, like a context-manager function
    """Count the request and observe its duration by status code (`async with track(metrics, model, endpoint)`;
    `protocol`: the metrics' protocol label, http or grpc).

    A plain class, not a generator-based context manager: it runs on every inference request."""

    __slots__ = ("_metrics", "_model", "_endpoint", "_protocol", "_start")

    def __init__(self, metrics: Metrics, model: str, endpoint: str, protocol: str = "http") -> None:
        self._metrics, self._model, self._endpoint, self._protocol = metrics, model, endpoint, protocol
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is None:
            code = 200
        elif isinstance(exc, ServiceError):
            code = exc.status
        elif isinstance(exc, (asyncio.CancelledError, ClientDisconnect)):
            code = 499
        else:
            code = 500
        self._metrics.observe_request(self._model, self._endpoint, code, time.perf_counter() - self._start,
                                      self._protocol)


async def cancel_on_disconnect(request: RequestView, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelling it (so its request leaves the batch queue) if the client disconnects.

    Call only after the body has been read. Under vitserve's HTTP protocol the connection says when it is
    lost (`request.connection`: no task per request); under any other ASGI server one watcher task waits
    for the `http.disconnect` message (the next ASGI message once the body has been read)."""
    task = asyncio.current_task()
    assert task is not None
    state = {"finished": False, "disconnected": False}

    def on_disconnect() -> None:
        if not state["finished"]:
            state["disconnected"] = True
            task.cancel()

    def on_watcher_done(watcher: asyncio.Task[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            on_disconnect()

    connection = request.connection
    watcher: asyncio.Task[None] | None = None
    if connection is not None:
        connection.watch_disconnect(on_disconnect)
        read_on(connection)
    else:
        watcher = asyncio.get_running_loop().create_task(request.wait_disconnected())
        watcher.add_done_callback(on_watcher_done)
    try:
        return await work
    except asyncio.CancelledError:
        if state["disconnected"] and task.uncancel() == 0:
            raise ClientClosedRequest("client disconnected") from None
        raise
    finally:
        state["finished"] = True
        if watcher is not None:
            watcher.cancel()
        elif connection is not None:
            connection.unwatch_disconnect(on_disconnect)


def read_on(connection: object) -> None:
    """Keep reading a connection whose request's body is in, so that its loss is noticed while the request computes.

    uvicorn stops reading when a body piece leaves more than its high-water mark (64 KiB) buffered and starts
    again at the next `receive` or once the response is done: after a large body's last piece nothing is read
    meanwhile, and a client that resets or closes would be computed for. What follows the body is the next
    request's head, whose arrival pauses reading again (uvicorn queues pipelined requests)."""
    flow = getattr(connection, "flow", None)
    if flow is not None:
        flow.resume_reading()


Q = TypeVar("Q", bound=BaseModel)


#: query strings up to this long are cached once validated (bounds the cache's memory: 1024 entries)
CACHED_QUERY_BYTES = 256


def parse_query(model: type[Q], request: RequestView) -> Q:
    """Validate query parameters with a pydantic model; errors read like FastAPI's (400).

    Clients repeat the same few query strings: a short one is validated once and the result (only
    ever read) reused. Errors are not cached."""
    raw = request.query_string
    return _parse_query_cached(model, raw) if len(raw) <= CACHED_QUERY_BYTES else _parse_query(model, raw)


def _parse_query(model: type[Q], query_string: bytes) -> Q:
    try:
        return model.model_validate(dict(QueryParams(query_string)))
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc.errors(), prefix=("query",))) from None


_parse_query_cached = functools.lru_cache(maxsize=1024)(_parse_query)


def query_parameters_doc(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI `parameters` for a query model, for routes that parse their query themselves."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop,
         **({"description": prop["description"]} if "description" in prop else {})}
        for name, prop in schema["properties"].items()
    ]


def server_timing(timings: Any) -> str:
    """Server-Timing header value from a `Timings` model."""
    parts = [
        f"queue;dur={timings.queue_ms:.3f}",
        f"preprocess;dur={timings.preprocess_ms:.3f}",
        f"compute;dur={timings.compute_ms:.3f}",
        f"total;dur={timings.total_ms:.3f}",
    ]
    return ", ".join(parts)
