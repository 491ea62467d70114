"""Batcher: the pure collection function (injected clock) and the asyncio batcher with fake runs."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.batcher import (
    Batcher,
    BatcherHooks,
    BatcherStopped,
    BatchLimits,
    PendingRequest,
    collect_batch,
    next_wakeup,
)
from service.errors import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded


def images(ids: list[float]) -> np.ndarray:
    """n images [n,3,2,2] whose first pixel carries an id."""
    arr = np.zeros((len(ids), 3, 2, 2), dtype=np.float32)
    arr[:, 0, 0, 0] = ids
    return arr


def echo(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, 0, 0:1].copy()


class _Loopless:
    """A future stand-in for the pure function tests (no event loop needed)."""

    def __init__(self, done: bool = False) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


def pending(size: int, at: float, deadline: float | None = None, cancelled: bool = False) -> PendingRequest:
    return PendingRequest(images([0.0] * size), _Loopless(cancelled), at, deadline)  # type: ignore[arg-type]


LIMITS = BatchLimits(max_batch_size=4, max_queue_delay_s=0.010, max_queue_size=16)


# -- collect_batch: a plain function of queue, limits and clock -------------------------------------


def test_idle_runtime_dispatches_a_single_request_at_once() -> None:
    q = deque([pending(1, at=0.0)])
    batch, expired = collect_batch(q, LIMITS, now=0.0, idle=True)
    assert [r.size for r in batch] == [1] and not expired and not q


def test_busy_runtime_waits_for_the_queue_delay() -> None:
    q = deque([pending(1, at=0.0), pending(1, at=0.001)])
    assert collect_batch(q, LIMITS, now=0.005, idle=False) == ([], [])
    assert len(q) == 2
    assert next_wakeup(q, LIMITS, can_dispatch=True) == pytest.approx(0.010)
    batch, _ = collect_batch(q, LIMITS, now=0.010, idle=False)
    assert len(batch) == 2 and not q


def test_full_batch_is_dispatched_without_waiting() -> None:
    q = deque([pending(1, at=0.0) for _ in range(6)])
    batch, _ = collect_batch(q, LIMITS, now=0.0, idle=False)
    assert len(batch) == 4 and len(q) == 2


def test_multi_image_requests_are_never_split_and_keep_fifo_order() -> None:
    q = deque([pending(3, at=0.0), pending(2, at=0.0), pending(1, at=0.0)])
    batch, _ = collect_batch(q, LIMITS, now=0.0, idle=True)
    assert [r.size for r in batch] == [3]
    assert [r.size for r in q] == [2, 1]


def test_expired_request_is_returned_not_batched_and_cancelled_ones_leave() -> None:
    q = deque([pending(1, at=0.0, deadline=0.002), pending(1, at=0.0, cancelled=True),
               pending(1, at=0.0, deadline=1.0)])
    batch, expired = collect_batch(q, LIMITS, now=0.003, idle=True)
    assert [r.deadline for r in expired] == [0.002]
    assert [r.deadline for r in batch] == [1.0]
    assert not q


@settings(max_examples=200, deadline=None)
@given(
    reqs=st.lists(
        st.tuples(st.integers(1, 4), st.floats(0, 1), st.one_of(st.none(), st.floats(0, 2)), st.booleans()),
        max_size=12,
    ),
    now=st.floats(0, 2),
    idle=st.booleans(),
)
def test_collect_batch_partitions_the_queue(reqs, now, idle) -> None:
    reqs = sorted(reqs, key=lambda r: r[1])
    items = [pending(size, at, deadline, cancelled) for size, at, deadline, cancelled in reqs]
    q = deque(items)
    batch, expired = collect_batch(q, LIMITS, now=now, idle=idle)
    live = [r for r in items if not r.future.done()]
    # nothing lost, nothing duplicated, cancelled ones gone
    assert sorted(map(id, batch + expired + list(q))) == sorted(map(id, live))
    assert all(r.deadline is not None and r.deadline <= now for r in expired)
    assert all(r.deadline is None or r.deadline > now for r in batch + list(q))
    assert sum(r.size for r in batch) <= LIMITS.max_batch_size
    # FIFO: the batch is a prefix of the surviving queue
    survivors = [r for r in live if r not in expired]
    assert survivors[: len(batch)] == batch
    if survivors and idle:
        assert batch, "an idle runtime must get work at once"


# -- the asyncio batcher ---------------------------------------------------------------------------


class RecordingHooks(BatcherHooks):
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.expired = 0
        self.rejected = 0
        self.failed = 0
        self.depths: list[int] = []

    def on_batch(self, size, compute_s, requests, dispatched_at) -> None:
        self.batches.append(size)

    def on_batch_failed(self, size, error) -> None:
        self.failed += size

    def on_expired(self, images: int, requests: int = 1) -> None:
        self.expired += images

    def on_rejected(self, images: int, requests: int = 1) -> None:
        self.rejected += images

    def on_queue_depth(self, images: int) -> None:
        self.depths.append(images)


class Gate:
    """A run function that blocks until opened and records what it computed."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.computed: list[float] = []
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.open.wait(10)
        self.computed.extend(batch[:, 0, 0, 0].tolist())
        self.batches.append(batch.shape[0])
        return echo(batch)


async def _wait_entered(gate: Gate) -> None:
    while not gate.entered.is_set():
        await asyncio.sleep(0.001)


def test_concurrent_requests_share_a_batch_while_the_runtime_is_busy() -> None:
    async def main() -> None:
        gate, hooks = Gate(), RecordingHooks()
        b = Batcher(gate, LIMITS, hooks=hooks)
        b.start()
        first = asyncio.create_task(b.submit(images([100.0])))
        await _wait_entered(gate)
        rest = [asyncio.create_task(b.submit(images([float(i)]))) for i in range(4)]
        await asyncio.sleep(0.02)
        gate.open.set()
        results = await asyncio.gather(first, *rest)
        assert [float(r.outputs[0, 0]) for r in results] == [100.0, 0.0, 1.0, 2.0, 3.0]
        assert gate.batches == [1, 4]
        assert results[1].batch_size == 4
        await b.stop(1.0)

    asyncio.run(main())


def test_a_finished_worker_gets_the_next_batch_before_its_requests_are_answered() -> None:
    """The worker must not idle while the event loop writes the finished batch's responses."""

    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, LIMITS)
        b.start()
        async def answered_first() -> int:
            await b.submit(images([1.0]))
            return b.inflight_batches  # looked at in the very step the answer arrives

        first = asyncio.create_task(answered_first())
        await _wait_entered(gate)
        second = asyncio.create_task(b.submit(images([2.0])))
        await asyncio.sleep(0.01)
        gate.open.set()
        assert await first == 1, "the second batch was not on the worker when the first was answered"
        await second
        assert gate.batches == [1, 1]
        await b.stop(1.0)

    asyncio.run(main())


def test_two_instances_compute_two_batches_at_once() -> None:
    async def main() -> None:
        both = threading.Barrier(2, timeout=5)

        def run(batch: np.ndarray) -> np.ndarray:
            both.wait()  # raises BrokenBarrierError (failing the batch) unless two batches run together
            return echo(batch)

        b = Batcher(run, BatchLimits(1, 0.0, 4), instances=2)
        b.start()
        results = await asyncio.gather(b.submit(images([1.0])), b.submit(images([2.0])))
        assert [float(r.outputs[0, 0]) for r in results] == [1.0, 2.0]
        await b.stop(1.0)

    asyncio.run(main())


def test_full_queue_rejects_at_once_with_overloaded() -> None:
    async def main() -> None:
        gate, hooks = Gate(), RecordingHooks()
        b = Batcher(gate, BatchLimits(2, 0.0, 2), hooks=hooks)
        b.start()
        running = asyncio.create_task(b.submit(images([1.0])))
        await _wait_entered(gate)
        queued = asyncio.create_task(b.submit(images([2.0, 3.0])))
        await asyncio.sleep(0)
        assert b.is_overloaded(1)
        with pytest.raises(Overloaded) as info:
            await b.submit(images([4.0]))
        assert int(info.value.headers()["Retry-After"]) >= 1
        gate.open.set()
        await asyncio.gather(running, queued)
        assert hooks.rejected == 1 and 4.0 not in gate.computed
        await b.stop(1.0)

    asyncio.run(main())


def test_expired_request_is_never_computed() -> None:
    async def main() -> None:
        gate, hooks = Gate(), RecordingHooks()
        loop = asyncio.get_running_loop()
        b = Batcher(gate, LIMITS, hooks=hooks, clock=loop.time)
        b.start()
        running = asyncio.create_task(b.submit(images([1.0])))
        await _wait_entered(gate)
        doomed = asyncio.create_task(b.submit(images([2.0]), deadline=loop.time() + 0.01))
        with pytest.raises(DeadlineExceeded):
            await doomed  # fails while the runtime is still busy: the collector woke for the deadline
        gate.open.set()
        await running
        with pytest.raises(DeadlineExceeded):
            await b.submit(images([3.0]), deadline=loop.time() - 1)
        await b.stop(1.0)
        assert gate.computed == [1.0]
        assert hooks.expired == 2

    asyncio.run(main())


def test_queued_images_follow_submits_expiries_and_dispatches() -> None:
    async def main() -> None:
        gate = Gate()
        loop = asyncio.get_running_loop()
        b = Batcher(gate, LIMITS, clock=loop.time)
        b.start()
        running = asyncio.create_task(b.submit(images([1.0])))
        await _wait_entered(gate)
        waiting = asyncio.create_task(b.submit(images([2.0, 3.0])))
        doomed = asyncio.create_task(b.submit(images([4.0]), deadline=loop.time() + 0.01))
        await asyncio.sleep(0)
        assert b.queued_images == 3 and b.is_overloaded(14) and not b.is_overloaded(13)
        with pytest.raises(DeadlineExceeded):
            await doomed
        assert b.queued_images == 2
        gate.open.set()
        await asyncio.gather(running, waiting)
        assert b.queued_images == 0 and not b.is_overloaded(16)
        await b.stop(1.0)

    asyncio.run(main())


def test_cancelled_request_leaves_the_queue_and_is_not_computed() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, LIMITS)
        b.start()
        running = asyncio.create_task(b.submit(images([1.0])))
        await _wait_entered(gate)
        gone = asyncio.create_task(b.submit(images([2.0])))
        await asyncio.sleep(0.005)
        assert b.queued_images == 1
        gone.cancel()
        await asyncio.sleep(0)
        assert b.queued_images == 0
        gate.open.set()
        await running
        await b.stop(1.0)
        assert gate.computed == [1.0]

    asyncio.run(main())


def test_the_queue_depth_is_reported_once_per_collector_turn_as_it_changes() -> None:
    async def main() -> list[int]:
        gate, hooks = Gate(), RecordingHooks()
        b = Batcher(gate, LIMITS, hooks=hooks)
        b.start()
        first = b.enqueue(images([1.0]))
        await _wait_entered(gate)  # computing: the queue is empty again
        waiting = [b.enqueue(images([float(i)])) for i in (2, 3, 4)]  # three in one turn
        await asyncio.sleep(0.01)
        b.withdraw(waiting[0])
        await asyncio.sleep(0.01)
        gate.open.set()
        await asyncio.gather(first.future, *(r.future for r in waiting[1:]))
        await b.stop(1.0)
        return hooks.depths

    depths = asyncio.run(main())
    # the first is taken in the turn it arrived (nothing to report); three waiting: one report for the turn
    # (not 1, 2, 3); 2 after the withdrawal; 0 once they are taken; stop() reports 0 again
    assert depths == [3, 2, 0, 0]


def test_arrivals_while_every_worker_is_busy_do_not_wake_the_collector() -> None:
    """The collector has nothing to decide until a worker is free (`_release` dispatches then): one turn per
    arrival would cost the engine a task step and two scans of the queue for each front end's frame."""

    async def main() -> None:
        gate, hooks = Gate(), RecordingHooks()
        b = Batcher(gate, LIMITS, hooks=hooks)
        b.start()
        first = b.enqueue(images([1.0]))
        await _wait_entered(gate)
        await asyncio.sleep(0.005)
        turns = 0
        dispatch = b._dispatch

        def counted() -> None:
            nonlocal turns
            turns += 1
            dispatch()

        b._dispatch = counted  # type: ignore[method-assign]
        waiting = []
        for i in (2, 3, 4):
            waiting.append(b.enqueue(images([float(i)])))
            await asyncio.sleep(0.002)
        assert turns == 0 and hooks.depths == [1, 2, 3]  # no collector turn; the depth still reported
        with_deadline = b.enqueue(images([5.0]), deadline=asyncio.get_running_loop().time() + 5)
        await asyncio.sleep(0.002)
        assert turns == 1  # a deadline needs its timer: that one wakes it
        gate.open.set()
        await asyncio.gather(first.future, *(r.future for r in [*waiting, with_deadline]))
        assert gate.batches == [1, 4]
        await b.stop(1.0)

    asyncio.run(main())


class _NoRepr(np.ndarray):
    """An input array that must never be printed (a request's repr used to print its whole input)."""

    def __repr__(self) -> str:
        raise AssertionError("the input array was printed")


def test_enqueue_and_withdraw_answer_through_the_future_without_a_task() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, LIMITS)
        b.start()
        first = b.enqueue(images([1.0]).view(_NoRepr))
        await _wait_entered(gate)  # the worker computes `first`: it is out of the queue
        queued = b.enqueue(images([2.0]))
        kept = b.enqueue(images([3.0]))
        assert b.queued_images == 2
        b.withdraw(queued)  # still queued: it leaves the queue, its future is cancelled
        assert queued.future.cancelled() and b.queued_images == 1
        b.withdraw(first)  # already taken into a batch: computed with it, its answer dropped
        b.withdraw(first)  # a second withdraw changes nothing
        assert first.future.cancelled() and b.queued_images == 1
        gate.open.set()
        out = await kept.future
        assert out.outputs.ravel().tolist() == [3.0]
        await b.stop(1.0)
        assert gate.computed == [1.0, 3.0]

    asyncio.run(main())


@pytest.mark.parametrize(
    "run, error",
    [
        (lambda batch: (_ for _ in ()).throw(RuntimeError("boom")), InferenceFailed),
        (lambda batch: echo(batch)[:-1], InferenceFailed),
    ],
    ids=["runtime-raises", "wrong-output-count"],
)
def test_failed_batch_fails_every_member(run, error) -> None:
    async def main() -> None:
        hooks = RecordingHooks()
        b = Batcher(run, BatchLimits(4, 0.05, 8), hooks=hooks)
        b.start()
        results = await asyncio.gather(*(b.submit(images([float(i)])) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, error) for r in results)
        assert hooks.failed == 3
        await b.stop(1.0)

    asyncio.run(main())


def test_request_larger_than_max_batch_is_invalid() -> None:
    async def main() -> None:
        b = Batcher(echo, LIMITS)
        b.start()
        with pytest.raises(InvalidInput):
            await b.submit(images([0.0] * 5))
        await b.stop(1.0)

    asyncio.run(main())


def test_stop_drains_accepted_requests_then_refuses_new_ones() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, LIMITS)
        b.start()
        tasks = [asyncio.create_task(b.submit(images([float(i)]))) for i in range(7)]
        await _wait_entered(gate)
        stopping = asyncio.create_task(b.stop(5.0))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherStopped):
            await b.submit(images([99.0]))
        gate.open.set()
        assert await stopping == 0
        assert [float(t.result().outputs[0, 0]) for t in tasks] == [float(i) for i in range(7)]

    asyncio.run(main())


def test_stop_after_drain_timeout_fails_what_is_left() -> None:
    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, LIMITS)
        b.start()
        tasks = [asyncio.create_task(b.submit(images([float(i)]))) for i in range(3)]
        await _wait_entered(gate)
        failed = await b.stop(0.01)
        gate.open.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert failed == 3 and all(isinstance(r, BatcherStopped) for r in results)

    asyncio.run(main())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(
            st.integers(1, 3),  # images in the request
            st.integers(0, 3),  # event-loop ticks before submitting
            st.one_of(st.none(), st.integers(0, 4)),  # cancel after this many ticks
        ),
        min_size=1,
        max_size=25,
    ),
    max_batch=st.integers(3, 6),
    compute_ticks=st.integers(0, 2),
    instances=st.integers(1, 2),
)
def test_every_accepted_request_gets_exactly_its_own_result(plan, max_batch, compute_ticks, instances) -> None:
    computed: list[float] = []
    lock = threading.Lock()

    def run(batch: np.ndarray) -> np.ndarray:
        for _ in range(compute_ticks):
            threading.Event().wait(0.0005)
        with lock:
            computed.extend(batch[:, 0, 0, 0].tolist())
        return batch[:, 0, 0, 0:1] * 2.0

    async def one(b: Batcher, ids: list[float], delay: int, cancel_after: int | None):
        for _ in range(delay):
            await asyncio.sleep(0)
        task = asyncio.create_task(b.submit(images(ids)))
        if cancel_after is not None:
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            task.cancel()
        try:
            return ids, await task
        except asyncio.CancelledError:
            return ids, None
        except Overloaded:
            return ids, "rejected"

    async def main() -> None:
        b = Batcher(run, BatchLimits(max_batch, 0.001, max_batch * 3), instances=instances)
        b.start()
        next_id = 1.0
        jobs = []
        for size, delay, cancel_after in plan:
            ids = [next_id + k for k in range(size)]
            next_id += size
            jobs.append(one(b, ids, delay, cancel_after))
        outcomes = await asyncio.gather(*jobs)
        await b.stop(5.0)
        answered = [ids for ids, r in outcomes if r not in (None, "rejected")]
        for ids, result in outcomes:
            if result not in (None, "rejected"):
                assert result.outputs[:, 0].tolist() == [2.0 * i for i in ids]
                assert 1 <= result.batch_size <= max_batch
        assert len(computed) == len(set(computed)), "an image was computed twice"
        assert {i for ids in answered for i in ids} <= set(computed)
        cancelled_or_rejected = {i for ids, r in outcomes if r in (None, "rejected") for i in ids}
        assert set(computed) - {i for ids in answered for i in ids} <= cancelled_or_rejected

    asyncio.run(main())


def test_each_request_learns_whether_its_own_rows_are_finite() -> None:
    """Found once per batch in the worker thread: a NaN or infinity marks only the request whose rows hold it."""

    async def main() -> None:
        gate = Gate()
        b = Batcher(gate, LIMITS)
        b.start()
        first = asyncio.create_task(b.submit(images([0.0])))
        await _wait_entered(gate)
        rest = [asyncio.create_task(b.submit(images(ids))) for ids in ([1.0], [float("nan"), 2.0], [float("-inf")])]
        await asyncio.sleep(0.02)
        gate.open.set()
        results = await asyncio.gather(first, *rest)
        assert gate.batches == [1, 4]
        assert [r.finite for r in results] == [True, True, False, False]
        await b.stop(1.0)

    asyncio.run(main())


def test_finite_rows_of_any_output() -> None:
    from service.batcher import finite_rows

    assert finite_rows(np.array([[1.0, np.nan], [2.0, 3.0], [np.inf, 0.0]], np.float16)) == [False, True, False]
    assert finite_rows(np.arange(6, dtype=np.int64).reshape(3, 2)) == [True, True, True]
    assert finite_rows(np.array([1.0, np.nan], np.float32)) == [True, False]  # one value per row
    assert finite_rows(np.array([[1 + 1j], [complex(np.nan, 0)]])) == [True, False]
    for unknown in (np.array([["a"]], object), np.zeros((0, 3), np.float32), np.float32(1.0), [1.0], None):
        assert finite_rows(unknown) is None  # the pipeline then checks the request's rows itself
