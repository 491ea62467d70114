"""Per-model-version dynamic batcher: a bounded asyncio queue in front of one runtime worker thread.

Batch collection is a plain function of the queue, the limits and the clock (`collect_batch`,
after LitServe's `collate_requests`): it drops cancelled requests, returns the expired ones
(they get 504 and are never computed) and forms a batch when `max_batch_size` images wait, when
the oldest has waited `max_queue_delay`, or at once when the runtime is idle, so light load never
pays the delay. With one worker (the default) that means: whenever the worker is free, everything
waiting (up to the limit) goes; while it computes, the next batch collects. A worker that finishes
gets its next batch before the finished batch's requests are answered, so it never waits for the
event loop to write responses.

A request may carry several images (a v2 batch); it occupies that many slots in the queue and in
a batch, and is never split. The queue is bounded in images: past it, `Overloaded` (503 +
Retry-After) at once. Every accepted request gets exactly one answer: its own rows of the output,
or the batch's error; the output count is checked against the input count.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, cast

import numpy as np

from service.compute_threads import ComputeThreads
from service.errors import DeadlineExceeded, InferenceFailed, InvalidInput, ModelNotReady, Overloaded, ServiceError

log = logging.getLogger("vitserve.batcher")

Clock = Callable[[], float]


class BatcherStopped(ModelNotReady):
    """503: the batcher of this model version stopped taking requests (shutdown, unload, swap)."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int  # images

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size ({self.max_batch_size})"
            )


@dataclass(eq=False, repr=False)
class PendingRequest:
    """One accepted request waiting for its batch (no generated repr: the queue's `remove` of a request
    already taken puts the request's repr into its ValueError, which would print the whole input array)."""

    inputs: np.ndarray
    future: asyncio.Future[BatchOutput]
    enqueued_at: float
    deadline: float | None = None
    #: client requests it stands for: a front end sends the submits of one loop turn as one (its rows, in order)
    requests: int = 1
    size: int = field(init=False)  # images (read many times per request: computed once)

    def __post_init__(self) -> None:
        self.size = int(self.inputs.shape[0])


class BatchOutput(NamedTuple):
    """A request's own rows of the batch output and how it got them (a tuple: one is made per request)."""

    outputs: np.ndarray
    queue_s: float
    compute_s: float
    batch_size: int
    #: whether every output value is finite, found once per batch in the worker thread; None: not known
    finite: bool | None = None


def drop_expired(queue: deque[PendingRequest], now: float) -> list[PendingRequest]:
    """Remove cancelled requests and return (removing them too) those whose deadline has passed."""
    for req in queue:  # usually none: found without building anything
        if req.future.done() or (req.deadline is not None and req.deadline <= now):
            break
    else:
        return []
    expired: list[PendingRequest] = []
    kept: list[PendingRequest] = []
    for req in queue:
        if req.future.done():
            continue
        if req.deadline is not None and req.deadline <= now:
            expired.append(req)
        else:
            kept.append(req)
    if len(kept) != len(queue):
        queue.clear()
        queue.extend(kept)
    return expired


def collect_batch(
    queue: deque[PendingRequest], limits: BatchLimits, now: float, idle: bool
) -> tuple[list[PendingRequest], list[PendingRequest]]:
    """Take the next batch off `queue` if one is due; return (batch, expired).

    Due when the waiting images reach `max_batch_size`, when the oldest request has waited
    `max_queue_delay_s`, or when the runtime is `idle`. The batch is the longest FIFO prefix whose
    images fit in `max_batch_size`. Expired and cancelled requests leave the queue first.
    """
    expired = drop_expired(queue, now)
    if not queue:
        return [], expired
    due = idle or now - queue[0].enqueued_at >= limits.max_queue_delay_s or _holds(queue, limits.max_batch_size)
    if not due:
        return [], expired
    batch: list[PendingRequest] = []
    total = 0
    while queue and total + queue[0].size <= limits.max_batch_size:
        req = queue.popleft()
        batch.append(req)
        total += req.size
    return batch, expired


def _holds(queue: Iterable[PendingRequest], images: int) -> bool:
    """Whether the queue holds at least `images` images (counting stops there, not at the queue's end)."""
    total = 0
    for req in queue:
        total += req.size
        if total >= images:
            return True
    return False


def next_wakeup(queue: Iterable[PendingRequest], limits: BatchLimits, can_dispatch: bool) -> float | None:
    """When the collector must look again without news: the oldest's delay or the earliest deadline."""
    times = [r.deadline for r in queue if r.deadline is not None and not r.future.done()]
    if can_dispatch:
        first = next(iter(queue), None)
        if first is not None:
            times.append(first.enqueued_at + limits.max_queue_delay_s)
    return min(times) if times else None


def finite_rows(outputs: object) -> list[bool] | None:
    """Per row of a numeric output, whether all its values are finite (one pass for the batch, so no request
    scans its own rows on the event loop); None when `outputs` is no numeric array with rows."""
    if not isinstance(outputs, np.ndarray) or outputs.ndim < 1 or not outputs.size or outputs.dtype.kind not in "biufc":
        return None
    finite = np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)
    return cast("list[bool]", finite.tolist())


#: what a batch's compute thread hands back: the outputs, its gate wait and compute seconds, each row's finiteness
BatchResult = tuple[np.ndarray, float, float, list[bool] | None]


class BatcherHooks:
    """Observer of batcher events (the registry wires metrics and statistics to it). No-op by default."""

    def on_queue_depth(self, images: int) -> None: ...

    def on_batch(self, size: int, compute_s: float, requests: list[PendingRequest], dispatched_at: float) -> None: ...

    def on_batch_failed(self, size: int, error: BaseException) -> None: ...

    def on_expired(self, images: int, requests: int = 1) -> None: ...

    def on_rejected(self, images: int, requests: int = 1) -> None: ...


def fail_all(requests: Iterable[PendingRequest], error: BaseException) -> int:
    """Fail every request still waiting with `error`; return how many."""
    failed = 0
    for req in requests:
        if not req.future.done():
            req.future.set_exception(error)
            failed += 1
    return failed


def answer_all(batch: list[PendingRequest], outputs: np.ndarray, started_at: float, compute_s: float,
               finite: list[bool] | None) -> None:
    """Give each member of a computed batch its own rows of the outputs."""
    total, offset = sum(r.size for r in batch), 0
    for req in batch:
        end = offset + req.size
        if not req.future.done():
            req.future.set_result(BatchOutput(
                outputs[offset:end], started_at - req.enqueued_at, compute_s, total,
                None if finite is None else all(finite[offset:end]),
            ))
        offset = end


class Executor(Protocol):
    """What runs a model version's batches, as the pipeline and the loader use it: the in-process `Batcher`
    and a front end's remote executor (service/workers/client.py) both satisfy it."""

    @property
    def limits(self) -> BatchLimits: ...

    def is_overloaded(self, images: int = 1) -> bool: ...

    def retry_after_s(self) -> float: ...

    async def submit(self, inputs: np.ndarray, deadline: float | None = None) -> BatchOutput: ...

    async def stop(self, timeout_s: float) -> int: ...


class Batcher:
    """Queue + collector task + worker thread(s) for one runtime's `run(batch) -> outputs`."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        limits: BatchLimits,
        *,
        name: str = "model",
        instances: int = 1,
        clock: Clock = time.monotonic,
        hooks: BatcherHooks | None = None,
        gate: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        """`gate`: held around each batch's compute (service/compute_gate.py: models take turns on the cores);
        the wait for it counts as queue time, as a request's wait for a free worker does."""
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        self.name = name
        self.limits = limits
        self._run = run
        self._instances = instances
        self._clock = clock
        self._hooks = hooks or BatcherHooks()
        self._gate = gate or nullcontext
        self._queue: deque[PendingRequest] = deque()
        self._queued = 0  # images in the queue whose request is still waiting (kept as the queue changes)
        self._reported = 0  # the queue depth the hooks last saw (told once per loop turn, not per request)
        self._depth_due = False  # a report of the depth is scheduled for the end of this loop turn
        self._inflight_batches: dict[int, list[PendingRequest]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._threads: ComputeThreads[list[np.ndarray], BatchResult] | None = None
        self._last_compute_s = 0.0
        self._batch_ids = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- state -------------------------------------------------------------------------------
    @property
    def queued_images(self) -> int:
        return self._queued

    @property
    def inflight_batches(self) -> int:
        return len(self._inflight_batches)

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._stopping

    def is_overloaded(self, images: int = 1) -> bool:
        return self.queued_images + images > self.limits.max_queue_size

    def retry_after_s(self) -> float:
        """A guess of when there is room again: the batches ahead times the last compute time."""
        batches_ahead = math.ceil(self.queued_images / self.limits.max_batch_size)
        return max(1.0, batches_ahead * self._last_compute_s)

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is not None:
            return
        self._threads = ComputeThreads(self._instances, f"vitserve-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._collector(), name=f"batcher-{self.name}")

    async def stop(self, timeout_s: float) -> int:
        """Stop intake, let accepted requests finish for up to `timeout_s`; fail the rest. Returns failed count."""
        self._stopping = True
        self._wake.set()
        failed = 0
        if self._task is not None and not self._task.done():  # a second stop() has nothing left to wait for
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                pending = list(self._queue) + [r for b in self._inflight_batches.values() for r in b]
                self._queue.clear()
                self._queued = 0
                failed = fail_all(pending, BatcherStopped(f"model {self.name} stopped before the request was computed"))
            except asyncio.CancelledError:
                raise
        if self._threads is not None:
            self._threads.close()
        self._reported = 0
        self._hooks.on_queue_depth(0)
        return failed

    # -- intake ------------------------------------------------------------------------------
    async def submit(self, inputs: np.ndarray, deadline: float | None = None) -> BatchOutput:
        """Queue `inputs` [n, ...] (n images) and wait for their outputs [n, ...].

        `deadline` is on this batcher's clock. Raises Overloaded when the queue is full,
        DeadlineExceeded when the deadline passes before compute, BatcherStopped when stopping.
        (`Executor`: the seam between the request pipeline and execution.)
        """
        req = self.enqueue(inputs, deadline)
        try:
            return await req.future
        except asyncio.CancelledError:
            self.withdraw(req)
            raise

    def enqueue(self, inputs: np.ndarray, deadline: float | None = None, requests: int = 1) -> PendingRequest:
        """`submit` without the wait: the request is queued (or refused at once, raising as `submit` does)
        and its `future` gets the answer. For a caller that answers from a callback instead of a coroutine
        (the multi-process engine: no task per request); one that gives up calls `withdraw`. `requests`: the
        client requests whose rows `inputs` holds (a front end's group), counted as such by the hooks."""
        if self._task is None or self._stopping:
            raise BatcherStopped(f"model {self.name} is not accepting requests")
        size = int(inputs.shape[0]) if inputs.ndim else 0
        if size < 1 or size > self.limits.max_batch_size:
            raise InvalidInput(f"a request must carry 1..{self.limits.max_batch_size} images, got {size}")
        if deadline is not None and deadline <= self._clock():
            self._hooks.on_expired(size, requests)
            raise DeadlineExceeded("deadline passed before the request was queued")
        if self.is_overloaded(size):
            self._hooks.on_rejected(size, requests)
            raise Overloaded(f"model {self.name} queue is full", retry_after_s=self.retry_after_s())
        future: asyncio.Future[BatchOutput] = asyncio.get_running_loop().create_future()
        req = PendingRequest(inputs=inputs, future=future, enqueued_at=self._clock(), deadline=deadline,
                             requests=requests)
        self._queue.append(req)
        self._queued += size
        if deadline is not None or len(self._inflight_batches) < self._instances:
            self._wake.set()  # the collector may dispatch it (or time its deadline); its turn reports the depth
        elif not self._depth_due:  # every worker busy: the collector has nothing to decide until one finishes
            self._depth_due = True  # (`_release` dispatches then), so it is not woken once per arrival; the
            asyncio.get_running_loop().call_soon(self._report_depth)  # new depth is reported once per turn
        return req

    def _report_depth(self) -> None:
        self._depth_due = False
        if self._queued != self._reported:
            self._reported = self._queued
            self._hooks.on_queue_depth(self._queued)

    def withdraw(self, req: PendingRequest) -> None:
        """The request's caller went away: its future is cancelled and it leaves the queue if it is still
        there (one already taken into a batch is computed with it; its rows are dropped)."""
        if not req.future.done():
            req.future.cancel()
        try:
            self._queue.remove(req)
            self._queued -= req.size
        except ValueError:  # already taken into a batch (or withdrawn before)
            pass
        self._wake.set()

    # -- collector ---------------------------------------------------------------------------
    async def _collector(self) -> None:
        """Dispatches on news (a submit, a finished batch) and on timers (queue delay, deadlines)."""
        while True:
            self._wake.clear()
            self._dispatch()
            if self._stopping and not self._queue and not self._inflight_batches:
                return
            can_dispatch = len(self._inflight_batches) < self._instances
            wake_at = next_wakeup(self._queue, self.limits, can_dispatch)
            if wake_at is None:
                await self._wake.wait()
                continue
            # a timer that sets the event, not asyncio.wait_for (which wraps the wait in a new task each time:
            # this loop turns once per submitted request under load)
            timer = asyncio.get_running_loop().call_later(max(0.0, wake_at - self._clock()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _dispatch(self) -> None:
        """Start every batch that is due now, each on a free worker; fail the expired requests.

        Synchronous, so a worker that just finished gets its next batch *before* the loop spends its
        time answering the finished batch's requests (the worker would otherwise idle meanwhile)."""
        while True:
            now = self._clock()
            waiting = len(self._queue)
            if len(self._inflight_batches) < self._instances:
                batch, expired = collect_batch(self._queue, self.limits, now, idle=not self._inflight_batches)
            else:
                batch, expired = [], drop_expired(self._queue, now)
            for req in expired:
                req.future.set_exception(DeadlineExceeded("deadline passed while queued; not computed"))
                self._hooks.on_expired(req.size, req.requests)
            if len(self._queue) != waiting:  # taken, expired or cancelled requests left the queue
                self._queued = sum(r.size for r in self._queue if not r.future.done())
            if self._queued != self._reported:
                self._reported = self._queued
                self._hooks.on_queue_depth(self._queued)
            if not batch:
                return
            self._batch_ids += 1
            self._inflight_batches[self._batch_ids] = batch
            assert self._threads is not None  # started with the collector
            running = self._threads.submit(self._compute, [r.inputs for r in batch])
            task = asyncio.get_running_loop().create_task(self._finish(self._batch_ids, batch, running, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _compute(self, inputs: list[np.ndarray]) -> BatchResult:
        """(outputs, compute seconds, seconds waited for the compute gate, whether each output row is finite)
        of one batch, in a worker thread."""
        batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)
        asked = self._clock()
        with self._gate():
            waited = self._clock() - asked
            start = time.perf_counter()
            out = self._run(batch)
            compute_s = time.perf_counter() - start
        return out, compute_s, waited, finite_rows(out)

    async def _finish(
        self,
        batch_id: int,
        batch: list[PendingRequest],
        running: asyncio.Future[BatchResult],
        dispatched_at: float,
    ) -> None:
        """Wait for a batch on its worker, start the next one, then answer each member."""
        total = sum(r.size for r in batch)
        try:
            outputs, compute_s, waited_s, finite = await running
            if not isinstance(outputs, np.ndarray) or outputs.ndim < 1 or outputs.shape[0] != total:
                got = getattr(outputs, "shape", type(outputs).__name__)
                raise InferenceFailed(f"runtime returned outputs of shape {got} for {total} inputs")
        except Exception as exc:  # noqa: BLE001 - every member must get an answer
            self._release(batch_id)
            log.error("model %s: batch of %d failed", self.name, total, exc_info=exc)
            self._hooks.on_batch_failed(total, exc)
            error = exc if isinstance(exc, ServiceError) else InferenceFailed(
                f"inference failed in the runtime ({type(exc).__name__})"
            )
            fail_all(batch, error)
            return
        except BaseException:  # cancelled (stop timed out): the members were failed by stop()
            self._release(batch_id)
            raise
        self._release(batch_id)
        self._last_compute_s = compute_s
        started_at = dispatched_at + waited_s  # waiting for the cores is queueing too
        self._hooks.on_batch(total, compute_s, batch, started_at)
        answer_all(batch, outputs, started_at, compute_s, finite)

    def _release(self, batch_id: int) -> None:
        """The batch's worker is free: hand it the next due batch at once, and let the collector re-plan."""
        self._inflight_batches.pop(batch_id, None)
        if self._task is not None and not self._task.done():  # not after a stop() that timed out
            self._dispatch()
        self._wake.set()
