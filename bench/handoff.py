"""The floor of a hand-off on this machine: the CPU a thread or a process round trip costs.

The batcher hands each batch to a worker thread and back (service/compute_threads.py), and with
`--http-workers N` every batch of answers crosses from the engine to a front end and every frame of
requests the other way. Much of that cost is the machine's (its scheduler, and on a virtual machine
the exits a wake-up takes), not the service's Python, and it bounds what a multi-process front end
can gain on few cores: reported beside the front-end benchmark so its ratio can be read against it.

- `executor`: asyncio `run_in_executor` of a no-op on a one-thread ThreadPoolExecutor (uvloop when
  installed, as the service runs): the usual way, and the batcher's before compute_threads.py.
- `compute_threads`: the same round trip through the batcher's `ComputeThreads`.
- `compute_threads_2ms`: with a 2 ms sleep in the worker (the stand-in's batch): the loop goes idle
  meanwhile and is woken from idle, as the engine's is.
- `process`: one byte each way between two processes over a socket pair (a control-frame round
  trip), both processes' CPU.
Thread round trips count every thread of this process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.compute_threads import ComputeThreads


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def thread_round_trip_us(n: int, sleep_s: float = 0.0, *, executor: bool = False) -> float:
    """CPU µs (this process, every thread) per round trip of `time.sleep(sleep_s)` on a worker thread, through
    the batcher's `ComputeThreads` (or, with `executor`, asyncio's `run_in_executor`)."""

    async def trips() -> float:
        loop = asyncio.get_running_loop()
        if executor:
            with ThreadPoolExecutor(max_workers=1) as pool:
                await loop.run_in_executor(pool, time.sleep, 0)  # the thread exists before the clock starts
                start = time.process_time()
                for _ in range(n):
                    await loop.run_in_executor(pool, time.sleep, sleep_s)
                return time.process_time() - start
        threads: ComputeThreads[float, None] = ComputeThreads(1, "handoff")
        try:
            start = time.process_time()
            for _ in range(n):
                await threads.submit(time.sleep, sleep_s)
            return time.process_time() - start
        finally:
            threads.close()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(trips()) / n * 1e6


def process_round_trip_us(n: int) -> float:
    """CPU µs (both processes) per round trip of one byte each way over a socket pair."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echoing process: nothing but the round trips, then out
        parent.close()
        try:
            while child.recv(1):
                child.send(b"x")
        finally:
            os._exit(0)
    child.close()
    try:
        start = time.process_time()
        for _ in range(n):
            parent.send(b"x")
            parent.recv(1)
        own = time.process_time() - start
    finally:
        parent.close()  # the echo loop sees the end of the stream and exits
    _, _, usage = os.wait4(pid, 0)
    return (own + usage.ru_utime + usage.ru_stime) / n * 1e6


def measure(n: int = 2000) -> dict[str, float]:
    """The hand-offs' CPU µs per round trip (`n` round trips each; fewer for the 2 ms one)."""
    return {
        "executor": thread_round_trip_us(n, executor=True),
        "compute_threads": thread_round_trip_us(n),
        "compute_threads_2ms": thread_round_trip_us(max(1, n // 8), 0.002),
        "process": process_round_trip_us(n),
    }
