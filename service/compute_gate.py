"""A process-wide budget of CPU threads for ONNX Runtime compute, shared by every model version.

Each CPU session gets every core as intra-op threads, so a lone request on any model is as fast as
on a single-model server. Without a bound, several models computing at once would run
sessions x threads busy threads on the cores, and ONNX Runtime's statically partitioned operators
wait for their slowest, descheduled thread. The gate admits a batch when its session's threads fit
in the budget (the CPU cores by default): batches of different models take turns in arrival order
instead of thrashing, and idle cores always go to whichever model is computing. Runtimes that do not
compute on the CPU's threads (a session on a GPU provider) pass straight through.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset, `taskset`), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API on this platform
        return os.cpu_count() or 1


class ComputeGate:
    """A weighted FIFO semaphore of `threads` slots; a batch holds as many as its session's intra-op threads."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"the compute gate needs at least 1 thread, got {threads}")
        self.threads = threads
        self._free = threads
        self._waiting: deque[int] = deque()
        self._tickets = itertools.count()
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        """Threads not held by a batch right now."""
        with self._cond:
            return self._free

    @property
    def waiting(self) -> int:
        """Batches waiting for their turn."""
        with self._cond:
            return len(self._waiting)

    def weight(self, threads: int) -> int:
        """What a session with `threads` intra-op threads holds: at least one slot, at most the whole budget."""
        return min(max(1, threads), self.threads)

    @contextmanager
    def hold(self, threads: int) -> Iterator[None]:
        """Block until it is this caller's turn and its threads are free; hold them for the block.

        Arrival order is kept (a large session is not starved by a stream of small ones)."""
        need = self.weight(threads)
        with self._cond:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            self._cond.wait_for(lambda: self._waiting[0] == ticket and self._free >= need)
            self._waiting.popleft()
            self._free -= need
            self._cond.notify_all()  # the next in line may fit in what is left
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()

    def for_runtime(self, threads: int) -> Callable[[], AbstractContextManager[None]] | None:
        """What a runtime's batches (and warm-up runs) hold: `threads`, its `cpu_threads`; nothing for a runtime
        that computes off the CPU's threads (0: a GPU provider, a fake)."""
        if threads <= 0:
            return None
        return functools.partial(self.hold, threads)
