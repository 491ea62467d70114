"""The compute gate: a weighted FIFO budget of CPU threads shared by every model's batches."""

from __future__ import annotations

import threading
import time

import pytest

from service.compute_gate import ComputeGate


def test_weights_are_clamped_to_the_budget() -> None:
    gate = ComputeGate(2)
    assert (gate.weight(0), gate.weight(1), gate.weight(2), gate.weight(8)) == (1, 1, 2, 2)
    with pytest.raises(ValueError):
        ComputeGate(0)


def test_runtimes_off_the_cpu_threads_pass_straight_through() -> None:
    gate = ComputeGate(2)
    assert gate.for_runtime(0) is None
    hold = gate.for_runtime(2)
    assert hold is not None
    with hold():
        assert gate.free == 0
    assert gate.free == 2


def test_a_batch_waits_until_its_threads_are_free_and_turns_keep_arrival_order() -> None:
    gate = ComputeGate(2)
    order: list[str] = []
    release = threading.Event()

    def run(label: str, threads: int, started: threading.Event | None = None) -> None:
        with gate.hold(threads):
            order.append(label)
            if started is not None:
                started.set()
                release.wait(5)

    first_in = threading.Event()
    first = threading.Thread(target=run, args=("whole machine", 2, first_in))
    first.start()
    assert first_in.wait(5)
    waiters = []
    for label, threads in (("second", 2), ("third", 1), ("fourth", 1)):
        t = threading.Thread(target=run, args=(label, threads))
        t.start()
        waiters.append(t)
        deadline = time.monotonic() + 5
        while gate.waiting < len(waiters) and time.monotonic() < deadline:
            time.sleep(0.005)
    assert gate.waiting == 3 and order == ["whole machine"]  # nobody overtakes a batch that holds every core
    release.set()
    for t in [first, *waiters]:
        t.join(5)
    assert order == ["whole machine", "second", "third", "fourth"]
    assert gate.free == 2 and gate.waiting == 0


def test_two_one_thread_batches_compute_side_by_side() -> None:
    gate = ComputeGate(2)
    inside = threading.Barrier(2, timeout=5)

    def run() -> None:
        with gate.hold(1):
            inside.wait()  # both must be inside at once, or the barrier times out

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not inside.broken


def test_cores_are_the_ones_this_process_may_run_on() -> None:
    """A process pinned to one core (a container's cpuset, taskset) counts one core, whatever the machine has."""
    import subprocess
    import sys

    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from service.compute_gate import cpu_cores; "
            "from service.runtimes.onnxruntime.session import session_config; "
            "print(cpu_cores(), session_config(['CPUExecutionProvider'], 0, 1, False, 'all').intra_op_threads)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"]
