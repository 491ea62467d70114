"""The control protocol between front-end processes and the engine: message kinds, errors, model table.

Front end -> engine (one unix-socket connection per front-end process):
  ("hello", pid)                                   -> ("table", ModelTable)
  ("segment", index, path)                         the engine maps a new arena segment -> ("segment_ok", index)
  ("submit", rid, model, version, segment, offset, size, shape, dtype, deadline, inline[, requests])
                                                   inputs lie in the block (`requests` > 1: a group, one
                                                   single-image request per row, counted as that many
                                                   requests); -> ("done", rid, shape, dtype,
                                                   queue_s, compute_s, batch_size, inline, finite) with the
                                                   outputs written into the same block (`finite`: whether
                                                   every output value is, found once per batch), or
                                                   ("error", rid, kind, message, retry_after_s), or
                                                   ("cancelled", rid) after a cancel. Without shared
                                                   memory (segment None) the input array is `inline`
                                                   and so are the outputs.
  ("unmap", index)                                 the front end released that (idle) segment
  ("readiness_off",)                               the front end started draining: the engine's
                                                   vitserve_server_ready goes to 0 (requests still accepted)
  ("cancel", rid)                                  the client went away: the request leaves the queue (a
                                                   forwarded request's app sees its client disconnect)
  ("http", rid, scope, complete)                   a request the engine's app answers -> ("http_response", rid,
                                                   status, headers, body); `complete`: it has no body, else
                                                   the app's every read of it asks ("more", rid) and gets
  ("body", rid, piece, more)                       the next piece the front end read from its client
Engine -> front end, unasked: ("table", ModelTable) whenever a model's state or versions change.
Each direction sends the messages of one event-loop turn as one frame (service/workers/transport.py).

`deadline` is absolute on the monotonic clock, which every process of one host shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.batcher import BatcherStopped, BatchLimits
from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NonFiniteOutput,
    Overloaded,
    ServiceError,
    ShuttingDown,
)
from service.repository import ModelEntry

_ERRORS: dict[str, type[ServiceError]] = {
    cls.__name__: cls
    for cls in (BatcherStopped, DeadlineExceeded, InferenceFailed, InvalidInput, ModelNotFound, ModelNotReady,
                NonFiniteOutput, Overloaded, ShuttingDown)
}


def encode_error(exc: ServiceError) -> tuple[str, str, float]:
    return type(exc).__name__, exc.message, float(getattr(exc, "retry_after_s", 0.0))


def decode_error(kind: str, message: str, retry_after_s: float) -> ServiceError:
    """The engine's error as the same class on this side (Overloaded keeps its Retry-After)."""
    cls = _ERRORS.get(kind, InferenceFailed)
    if cls is Overloaded:
        return Overloaded(message, retry_after_s=retry_after_s)
    return cls(message)


@dataclass(frozen=True)
class VersionRow:
    """What a front end needs of one serving version (its session stays in the engine)."""

    limits: BatchLimits
    provider: str
    provider_note: str | None


@dataclass(frozen=True)
class ModelRow:
    state: str
    reason: str | None
    load_seconds: float | None
    entry: ModelEntry | None
    #: changes whenever the engine swaps in new versions (a front end rebuilds its mirror then)
    generation: tuple[Any, ...] = ()
    versions: dict[int, VersionRow] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelTable:
    initial_done: bool
    draining: bool
    models: dict[str, ModelRow]
