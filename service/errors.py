"""Domain errors raised by the serving core, and the one table that maps them to HTTP and gRPC.

Every domain error of the service lives here (the core, the runtimes and the wire codecs raise them); only the
edge (this module's `install_error_handlers`, and service/api/grpc for gRPC with `GRPC_CODES`) turns them into
responses: `{"error": "..."}` over HTTP, a status code and the same message over gRPC. A 500 logs the trace and says
only "internal error", so no stack trace or path ever reaches a client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("vitserve.errors")


# An error message never echoes more than this of what a client sent (a shape of a million numbers).
MAX_MESSAGE_CHARS = 512


def clip_message(message: str) -> str:
    """`message` cut to MAX_MESSAGE_CHARS characters, saying how much was cut."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    cut = len(message) - MAX_MESSAGE_CHARS
    return f"{message[:MAX_MESSAGE_CHARS]}... ({cut} more characters)"


def exception_summary(exc: BaseException, limit: int = 300, *, first_line: bool = True, with_type: bool = True) -> str:
    """The one way a failure is shortened for a log line or an API field (a model's load reason, a version's
    last error): 'Type: first line of the message' (or the whole message on one line), at most `limit`
    characters."""
    name = type(exc).__name__
    lines = str(exc).strip().splitlines() or [name]
    text = lines[0] if first_line else " ".join(lines)
    if with_type and not text.startswith(name):
        text = f"{name}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ServiceError(Exception):
    """Base of the errors a client may see; `status` is the HTTP status the edge answers with."""

    status: int = 500

    def __init__(self, message: str) -> None:
        message = clip_message(message)
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(ServiceError):
    """400: the request is malformed (bad image, bad tensor shape or datatype, bad parameter)."""

    status = 400


class V2ProtocolError(InvalidInput, ValueError):
    """400: a request that does not follow the v2 protocol or does not fit the model (also a `ValueError`:
    bad user input). The v2 codec's too-large and unsupported-encoding cases raise `PayloadTooLarge` (413)
    and `UnsupportedMediaType` (415), so every class here answers with its own status."""


class Unauthorized(ServiceError):
    """401: a protected endpoint was called without the right API key."""

    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ModelNotFound(ServiceError):
    """404: no such model (or version) in the repository."""

    status = 404


class PayloadTooLarge(ServiceError):
    """413: body bytes or decoded image pixels above the configured limit."""

    status = 413


class UnsupportedMediaType(ServiceError):
    """415: a content type or image format the service does not read."""

    status = 415


class Overloaded(ServiceError):
    """503 + Retry-After: the model's queue is full; the client should retry later."""

    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ModelNotReady(ServiceError):
    """503: the model exists but is loading, failed to load, unloaded or shutting down."""

    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class ShuttingDown(ModelNotReady):
    """503 while the server drains: intake has stopped; retry elsewhere. The connection is closed after the
    answer, so keep-alive clients reconnect (to another replica) instead of reusing a socket about to go."""

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Connection": "close"}


class ClientClosedRequest(ServiceError):
    """499 (nginx's code): the client went away; its request left the queue and was not answered."""

    status = 499


class DeadlineExceeded(ServiceError):
    """504: the request's deadline passed before it could be computed (it never was)."""

    status = 504


class InferenceFailed(ServiceError):
    """500: the runtime failed on the batch this request was in (the reason is logged, not returned)."""

    status = 500


class NonFiniteOutput(InferenceFailed):
    """500: the model computed NaN or infinity for this request; only this request fails, never a `null` score."""


#: HTTP status of a domain error -> the gRPC status code Triton answers for it (the name of a `grpc.StatusCode`: this
#: module does not import the optional grpc package). A full queue and a message over the limit are
#: RESOURCE_EXHAUSTED, not ready / shutting down UNAVAILABLE, a client that left CANCELLED.
GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_code_name(exc: ServiceError) -> str:
    """The gRPC status code name for `exc` (a full queue is RESOURCE_EXHAUSTED where REST answers 503)."""
    if isinstance(exc, Overloaded):
        return "RESOURCE_EXHAUSTED"
    return GRPC_CODES.get(exc.status, "UNKNOWN")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": clip_message(message)}, status_code=status, headers=headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.message, exc.headers())


def validation_message(
    errors: Sequence[Any], prefix: tuple[str, ...] = (), *, limit: int = 5, lead: str = "invalid request: "
) -> str:
    """One line from pydantic's error list: 'invalid request: query.top_k: Input should be ...' (the first
    `limit` errors, then how many more)."""
    errors = list(errors)
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in (*prefix, *err.get("loc", ())) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return lead + "; ".join(parts) + more


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, validation_message(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else "error"
    if status == 422:
        status = 400
    return error_response(status, message, dict(exc.headers or {}))


async def _client_disconnected(_: Request, exc: Exception) -> JSONResponse:
    """499: the client hung up mid-request (e.g. during the upload); nobody reads this, nothing to log."""
    return error_response(499, "client disconnected")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


HANDLERS: list[tuple[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]]] = [
    (ServiceError, _service_error),
    (RequestValidationError, _validation_error),
    (StarletteHTTPException, _http_error),
    (ClientDisconnect, _client_disconnected),
    (Exception, _unexpected),
]
"""The one table from exception type to response (most specific first)."""


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, handler in HANDLERS:
        app.add_exception_handler(exc_type, handler)


async def exception_response(request: Request, exc: Exception) -> JSONResponse:
    """The response FastAPI's handlers would give for `exc` (for routes served outside FastAPI's router)."""
    for exc_type, handler in HANDLERS:
        if isinstance(exc, exc_type):
            return await handler(request, exc)
    raise exc  # unreachable: Exception matches everything
