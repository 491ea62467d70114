"""The control messages between a front end and the engine: one named tuple per kind, the model table, errors.

Each side dispatches on a message's type (a table of handlers per side). Named tuples, not dataclasses:
they pickle several times faster, and every inference request crosses as two of them.
`deadline` is absolute on the monotonic clock, which every process of one host shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

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

# -- front end -> engine -------------------------------------------------------------------------------------


class Hello(NamedTuple):
    """The first message; the engine answers with its `ModelTable`."""

    pid: int


class MapSegment(NamedTuple):
    """A new arena segment to map; answered `SegmentMapped` (the front end then unlinks its file)."""

    segment: int
    path: str


class Unmap(NamedTuple):
    """The front end released that (idle) segment."""

    segment: int


class Submit(NamedTuple):
    """Inputs to compute, in the block (`segment`, `offset`, `size`) or `inline` when there was no shared memory
    (`segment` None). `requests`: the client requests whose rows it carries (a group). Answered `Done` (outputs
    written into the same block, or inline), `Failed`, or `Cancelled` after a `Cancel`."""

    rid: int
    model: str
    version: int
    segment: int | None
    offset: int
    size: int
    shape: tuple[int, ...]
    dtype: str
    deadline: float | None
    inline: np.ndarray | None
    requests: int


class Cancel(NamedTuple):
    """The client went away: its request leaves the queue (a forwarded request's app sees a disconnect)."""

    rid: int


class ReadinessOff(NamedTuple):
    """The front end started draining: the engine's `vitserve_server_ready` goes to 0 (requests still go)."""


class Http(NamedTuple):
    """A request the engine's app answers (`HttpResponse`); `complete`: it has no body, else each read of
    the body by the app asks `More` and gets a `Body`."""

    rid: int
    scope: dict[str, Any]
    complete: bool


class Body(NamedTuple):
    rid: int
    piece: bytes
    more: bool


# -- engine -> front end (and `ModelTable`, sent at `Hello` and whenever a model changes) --------------------


class SegmentMapped(NamedTuple):
    segment: int


class Done(NamedTuple):
    rid: int
    shape: tuple[int, ...]
    dtype: str
    queue_s: float
    compute_s: float
    batch_size: int
    inline: np.ndarray | None
    #: whether every output value is (found once per batch)
    finite: bool


class Failed(NamedTuple):
    """An error, by class name (`encode_error`)."""

    rid: int
    kind: str
    message: str
    retry_after_s: float


class Cancelled(NamedTuple):
    rid: int


class HttpResponse(NamedTuple):
    rid: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class More(NamedTuple):
    """A forwarded request's app reads its body: the next piece, please."""

    rid: int


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
