"""Domain errors -> gRPC status codes (service/errors.py's `GRPC_CODES`), and what a handler reads of its call.

Why here: the core raises the same `ServiceError`s for both protocols; REST's table turns them into
`{"error": ...}` bodies, this module into `context.abort(code, message)` with the same message. A failure that
is no `ServiceError` is logged with its trace and answered INTERNAL "internal error", as REST's 500.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from starlette.datastructures import Headers

from service.errors import ServiceError, grpc_code_name

log = logging.getLogger("vitserve.grpc")

S = TypeVar("S")
Handler = Callable[[S, Any, Any], Awaitable[Any]]


def status_code(exc: ServiceError) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a domain error."""
    return grpc.StatusCode[grpc_code_name(exc)]


def trailing_metadata(exc: ServiceError) -> tuple[tuple[str, str], ...]:
    """REST's Retry-After, as trailing metadata (`retry-after`), for a full queue or a model not ready."""
    retry = exc.headers().get("Retry-After")
    return (("retry-after", retry),) if retry is not None else ()


def answers(handler: Handler[S]) -> Handler[S]:
    """Wrap an RPC handler: a `ServiceError` aborts the call with its code and message; anything else is logged
    and aborts INTERNAL; a cancelled call (the client left, or its deadline passed) stays cancelled."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except ServiceError as exc:
            await context.abort(status_code(exc), exc.message, trailing_metadata(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.error("unhandled error in %s", handler.__name__, exc_info=True)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


class CallHeaders:
    """A call's invocation metadata as the REST key check reads request headers (`Authorization`, `X-API-Key`)."""

    __slots__ = ("headers",)

    def __init__(self, context: Any) -> None:
        metadata = context.invocation_metadata() or ()
        self.headers = Headers({k: v for k, v in metadata if isinstance(v, str)})


__all__ = ["CallHeaders", "answers", "status_code", "trailing_metadata"]
