"""The floor of a hand-off on this machine: the CPU a thread or a process round trip costs.

The batcher hands each batch to a worker thread and back (asyncio `run_in_executor`), and with
`--http-workers N` every batch of answers crosses from the engine to a front end and every frame of
requests the other way. Those costs are the machine's (its scheduler, and on a virtual machine the
exits a wake-up takes), not the service's Python, and they bound what a multi-process front end can
gain on few cores: reported beside the front-end benchmark so its ratio can be read against them.

- `thread`: `run_in_executor` of a no-op on a one-thread pool, from an event loop (uvloop when
  installed, as the service runs): the batcher's hand-off per batch, both threads' CPU.
- `thread_2ms`: the same with a 2 ms sleep in the worker (the stand-in's batch): the loop goes idle
  meanwhile and is woken from idle, as the engine's is.
- `process`: one byte each way between two processes over a socket pair (a control-frame round
  trip), both processes' CPU.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def thread_round_trip_us(n: int, sleep_s: float = 0.0) -> float:
    """CPU µs (this process, every thread) per `run_in_executor` round trip of `time.sleep(sleep_s)`."""

    async def trips() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as pool:
            await loop.run_in_executor(pool, time.sleep, 0)  # the worker thread exists before the clock starts
            start = time.process_time()
            for _ in range(n):
                await loop.run_in_executor(pool, time.sleep, sleep_s)
            return time.process_time() - start

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
    """The three hand-offs' CPU µs per round trip (`n` round trips each; fewer for the 2 ms one)."""
    return {
        "thread": thread_round_trip_us(n),
        "thread_2ms": thread_round_trip_us(max(1, n // 8), 0.002),
        "process": process_round_trip_us(n),
    }
