"""The batcher's worker threads: a batch handed to a thread, its result handed back to the event loop.

`loop.run_in_executor` over a ThreadPoolExecutor does this with a work item, a concurrent Future (a
Condition and its lock) and a second, chained asyncio future per call. The batcher pays that once per
batch, and with small, frequent batches (a fast model, a GPU) it shows: `vitserve-bench frontend`
reports what a round trip costs on the machine (bench/handoff.py). Here a batch costs one queue put,
one asyncio future and one `call_soon_threadsafe`: the work the hand-off needs, no more.

Semantics are the executor's where the batcher relied on them: any number of threads share one
queue; an exception in the work (BaseException included) comes back on the future; `close` lets a
running batch finish, cancels those not started and lets the threads end (no join: as
`shutdown(wait=False, cancel_futures=True)`). At the interpreter's exit, as for an executor's threads,
every set still open is told to end and its threads are joined: a batch still computing then (a drain
that timed out) finishes before its session can be torn down under it, and a set never closed (a
batcher never stopped) does not hold the exit up.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")

_Item = tuple[asyncio.Future[Any], Callable[[Any], Any], Any]

#: the sets whose threads may still run, ended at exit by `_end_all`
_open: weakref.WeakSet[ComputeThreads[Any, Any]] = weakref.WeakSet()


class ComputeThreads(Generic[A, T]):
    """`count` threads running `fn(arg)` for `submit`, each answer set on the submitter's event loop."""

    def __init__(self, count: int, name: str) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._queue: SimpleQueue[_Item | None] = SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}") for i in range(count)]
        _open.add(self)
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[A], T], arg: A) -> asyncio.Future[T]:
        """Run `fn(arg)` on a free thread; the future (of the running loop) gets its result or exception."""
        if self._closed:
            raise RuntimeError("compute threads are closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((future, fn, arg))
        return future

    def close(self) -> None:
        """No more work: the batches not started are cancelled (on the calling loop), the running ones finish,
        then each thread ends."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            _run(*item)
            item = None  # the batch's arrays are not kept alive while this thread waits for the next


def _run(future: asyncio.Future[Any], fn: Callable[[Any], Any], arg: Any) -> None:
    try:
        result = fn(arg)
    except BaseException as exc:  # noqa: BLE001 - handed back to the awaiting side, as an executor does
        _post(future, _fail, exc)
    else:
        _post(future, _succeed, result)


def _end_all() -> None:
    """At exit, before the interpreter joins its threads: each open set's threads end once the work already
    queued is done (its answers go nowhere: the loops are gone)."""
    for threads in list(_open):
        threads._closed = True  # noqa: SLF001 - this module's own object
        for _ in threads._threads:  # noqa: SLF001 - this module's own object
            threads._queue.put(None)  # noqa: SLF001 - this module's own object


# runs before threading joins non-daemon threads (what concurrent.futures registers for its executors'
# threads); an atexit hook would run only after that join and wait for ever
threading._register_atexit(_end_all)  # type: ignore[attr-defined]  # CPython's private hook (3.9+), not in typeshed


def _post(future: asyncio.Future[Any], settle: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
    try:
        future.get_loop().call_soon_threadsafe(settle, future, value)
    except RuntimeError:  # its loop is closed: nobody waits for the answer any more
        pass


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled meanwhile (a stop that timed out)
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
