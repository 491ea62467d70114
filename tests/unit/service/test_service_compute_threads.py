"""The batcher's worker threads: answers and errors come back on the loop; close cancels what has not started."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.compute_threads import ComputeThreads


def test_results_and_errors_come_back_on_the_event_loop() -> None:
    async def main() -> None:
        threads: ComputeThreads[int, int] = ComputeThreads(1, "test-compute")
        loop_thread = threading.get_ident()
        seen: list[int] = []

        def square(x: int) -> int:
            seen.append(threading.get_ident())
            if x < 0:
                raise ValueError("negative")
            return x * x

        assert await threads.submit(square, 7) == 49
        with pytest.raises(ValueError, match="negative"):
            await threads.submit(square, -1)
        assert seen and loop_thread not in seen  # computed off the loop
        threads.close()

    asyncio.run(main())


def test_two_threads_compute_two_batches_at_once() -> None:
    async def main() -> None:
        threads: ComputeThreads[float, float] = ComputeThreads(2, "test-compute")
        barrier = threading.Barrier(2, timeout=5)

        def meet(x: float) -> float:
            barrier.wait()  # only returns when both run at the same time
            return x

        assert await asyncio.gather(threads.submit(meet, 1.0), threads.submit(meet, 2.0)) == [1.0, 2.0]
        threads.close()

    asyncio.run(main())


def test_close_finishes_the_running_batch_cancels_the_rest_and_ends_the_threads() -> None:
    async def main() -> None:
        threads: ComputeThreads[float, float] = ComputeThreads(1, "test-close")
        running = threading.Event()
        release = threading.Event()
        ran: list[float] = []

        def work(x: float) -> float:
            running.set()
            release.wait(5)
            ran.append(x)
            return x

        first = threads.submit(work, 1.0)
        queued = threads.submit(work, 2.0)
        while not running.is_set():
            await asyncio.sleep(0.001)
        threads.close()
        threads.close()  # twice is once
        assert queued.cancelled()
        with pytest.raises(RuntimeError):
            threads.submit(work, 3.0)
        release.set()
        assert await first == 1.0  # the running batch finishes and is answered
        for thread in threads._threads:  # noqa: SLF001 - the threads end once their work is done
            thread.join(5)
            assert not thread.is_alive()
        assert ran == [1.0]

    asyncio.run(main())


def test_an_answer_for_a_closed_loop_is_dropped_without_killing_the_thread() -> None:
    release = threading.Event()

    async def orphan() -> ComputeThreads[int, int]:
        threads: ComputeThreads[int, int] = ComputeThreads(1, "test-orphan")
        threads.submit(lambda x: release.wait(5) and x, 1)
        return threads

    threads = asyncio.run(orphan())  # the loop closes with the batch still running
    release.set()
    time.sleep(0.05)

    async def again() -> int:
        return await threads.submit(lambda x: x + 1, 41)

    assert asyncio.run(again()) == 42  # the same thread, alive, serves the next loop
    threads._queue.put(None)  # noqa: SLF001 - end it (its first loop cannot close it any more)


def test_at_exit_a_running_batch_finishes_and_an_unclosed_set_does_not_hold_the_exit(tmp_path: Path) -> None:
    """As an executor's threads: joined at exit after their work, never a hang for a set nobody closed."""
    script = tmp_path / "exit.py"
    script.write_text(
        "import asyncio, time\n"
        "from service.compute_threads import ComputeThreads\n"
        "idle = ComputeThreads(2, 'idle')\n"  # never used, never closed
        "busy = ComputeThreads(1, 'busy')\n"
        "def work(path):\n"
        "    time.sleep(0.3)\n"
        "    open(path, 'w').write('finished')\n"
        "async def main():\n"
        "    busy.submit(work, " + repr(str(tmp_path / "out.txt")) + ")\n"
        "    await asyncio.sleep(0.05)\n"  # the batch is running when the loop and the interpreter end
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, str(script)], cwd=root, timeout=30, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == "finished"
