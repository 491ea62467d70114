"""The control messages between a front end and the engine: one named tuple per kind, the model table, errors.

Front end -> engine: `Hello` (answered with the model `Table`, also pushed whenever a model changes),
`MapSegment` (the engine maps the new segment and unlinks its file), `Unmap` (an idle segment released),
`Submit` (answered `Done`, `Failed`, or `Cancelled` after a `Cancel`), `ReadinessOff` (the front end drains:
the engine's `vitserve_server_ready` goes to 0, requests still go), `Call` (an operation on the engine's own state:
repository load/unload, statistics, the metrics exposition; answered `Result` or `Failed`). Each side dispatches on
the message's type. On the wire a message is a plain tuple (`KINDS`): that pickles several times faster than a
named tuple or a dataclass, and every inference request crosses as two messages. `deadline` is absolute on the
monotonic clock, which every process of a host shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from service import errors
from service.batcher import BatcherStopped, BatchLimits
from service.repository import ModelEntry


class Hello(NamedTuple):
    pid: int


class MapSegment(NamedTuple):
    segment: int
    path: str


class Unmap(NamedTuple):
    segment: int


class Submit(NamedTuple):
    """Inputs in the block (`segment`, `offset`, `size`), where the outputs go too, or `inline` (`segment`
    None: no shared memory); `requests`: the client requests whose rows it carries (a group)."""

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
    rid: int


class ReadinessOff(NamedTuple):
    pass


class Call(NamedTuple):
    rid: int
    op: str  # a name in the engine's table of calls (service/workers/engine.py)
    args: tuple[Any, ...]


class Table(NamedTuple):
    table: ModelTable


class Done(NamedTuple):
    rid: int
    shape: tuple[int, ...]
    dtype: str
    queue_s: float
    compute_s: float
    batch_size: int
    inline: np.ndarray | None
    finite: bool  # whether every output value is (found once per batch)


class Failed(NamedTuple):
    rid: int
    kind: str
    message: str
    retry_after_s: float


class Cancelled(NamedTuple):
    rid: int


class Result(NamedTuple):
    rid: int
    value: Any


#: every kind, by its code on the wire (`Channel` sends a message as a plain tuple: its code, then its fields)
KINDS: tuple[type[tuple[Any, ...]], ...] = (Hello, MapSegment, Unmap, Submit, Cancel, ReadinessOff, Call, Table,
                                            Done, Failed, Cancelled, Result)


def _service_errors(cls: type[errors.ServiceError]) -> dict[str, type[errors.ServiceError]]:
    found = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        found.update(_service_errors(sub))
    return found


#: every domain error by name: the engine's error is raised as the same class in the front end
_ERRORS = _service_errors(errors.ServiceError) | {BatcherStopped.__name__: BatcherStopped}


def encode_error(exc: errors.ServiceError) -> tuple[str, str, float]:
    return type(exc).__name__, exc.message, float(getattr(exc, "retry_after_s", 0.0))


def decode_error(kind: str, message: str, retry_after_s: float) -> errors.ServiceError:
    """The engine's error as the same class on this side (Overloaded keeps its Retry-After)."""
    cls = _ERRORS.get(kind, errors.InferenceFailed)
    if cls is errors.Overloaded:
        return errors.Overloaded(message, retry_after_s=retry_after_s)
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
