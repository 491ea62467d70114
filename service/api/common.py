"""Pieces every router shares: body limit middleware, API-key check, request metrics, disconnects.

Only this layer knows about HTTP; it turns requests into pipeline calls and lets
`service.errors` turn domain errors into responses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Collection
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """413 from Content-Length before reading anything, and again while streaming a body without one."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length header")
                return
            if declared < 0:
                await _send_error(send, 400, "invalid Content-Length header")
                return
            if declared > self.max_bytes:
                await _send_error(send, 413, f"request body of {declared} bytes exceeds the limit of {self.max_bytes}")
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
                        await _send_error(send, 413, f"request body exceeds the limit of {limit} bytes")
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
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


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def check_key(request: Request, key: SecretStr | None, *, required: bool, what: str) -> None:
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


@asynccontextmanager
async def track(metrics: Metrics, model: str, endpoint: str) -> AsyncIterator[None]:
    """Count the request and observe its duration by status code."""
    start = time.perf_counter()
    code = 200
    try:
        yield
    except ServiceError as exc:
        code = exc.status
        raise
    except (asyncio.CancelledError, ClientDisconnect):
        code = 499
        raise
    except Exception:
        code = 500
        raise
    finally:
        metrics.requests.labels(model=model, code=str(code)).inc()
        metrics.request_duration.labels(model=model, endpoint=endpoint, code=str(code)).observe(
            time.perf_counter() - start
        )


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (so its request leaves the batch queue) if the client disconnects.

    Call only after the body has been read: the next ASGI message is then the disconnect.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientClosedRequest("client disconnected")


Q = TypeVar("Q", bound=BaseModel)


def parse_query(model: type[Q], request: Request) -> Q:
    """Validate query parameters with a pydantic model; errors read like FastAPI's (400)."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc.errors(), prefix=("query",))) from None


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
