"""A front end's groups: the single-image submits of one loop turn to one version go to the engine as one
request, each answered with its own row, counted by the engine as the requests they are.

Through a real engine connection (unix socket, shared memory, the engine's real batcher and observer)."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import pytest

from service.batcher import Batcher, BatchLimits, BatchOutput
from service.errors import DeadlineExceeded
from service.metrics import Metrics
from service.stats import VersionObserver
from service.workers.client import GROUP_DEADLINE_SLACK_S, EngineClient
from service.workers.engine import EngineServer

T = TypeVar("T")
LIMIT = 4  # requests per group in these tests


def _echo(batch: np.ndarray) -> np.ndarray:
    """Each row's first four input values: every request's answer is checkable from its own input."""
    return np.ascontiguousarray(batch.reshape(batch.shape[0], -1)[:, :4])


class _Store:
    """One model "m", version 1, on a real batcher whose hooks are a real observer; every enqueue recorded."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray] = _echo) -> None:
        self.metrics = Metrics()
        self.observer = VersionObserver(self.metrics, "m", 1, 10)
        self.executor = Batcher(run, BatchLimits(max_batch_size=32, max_queue_delay_s=0.0, max_queue_size=64),
                                name="m", hooks=self.observer)
        self.enqueued: list[tuple[int, int]] = []  # (rows, requests) per engine request
        enqueue = self.executor.enqueue

        def recording(inputs: np.ndarray, deadline: float | None = None, requests: int = 1) -> Any:
            self.enqueued.append((int(inputs.shape[0]), requests))
            return enqueue(inputs, deadline, requests)

        self.executor.enqueue = recording  # type: ignore[method-assign]
        self.listeners: list[object] = []
        self._models: dict[str, object] = {}
        self._initial_done = True
        self.draining = False

    def version(self, model: str, version: int) -> SimpleNamespace:
        self.executor.start()
        return SimpleNamespace(executor=self.executor, observer=self.observer)

    def is_model_ready(self, model: str) -> bool:
        return True

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: Callable[[EngineClient, _Store], Awaitable[T]],
         store: _Store | None = None) -> T:
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)

    async def main() -> T:
        app = SimpleNamespace(state=SimpleNamespace(store=store or _Store()))
        server = EngineServer(app, tmp_path / "engine.sock")  # type: ignore[arg-type]
        await server.start()
        client = EngineClient(tmp_path / "engine.sock")
        await client.connect()
        try:
            return await asyncio.wait_for(body(client, app.state.store), 10)
        finally:
            await client.close()
            await server.close()
            app.state.store.executor._threads and app.state.store.executor._threads.close()

    return asyncio.run(main())


def image(value: float) -> np.ndarray:
    return np.full((1, 3, 2, 2), value, np.float32)


def infer(client: EngineClient, x: np.ndarray, deadline: float | None = None) -> Awaitable[BatchOutput]:
    return client.infer("m", 1, x, deadline, 16 * x.shape[0], LIMIT)


def test_one_turns_submits_go_as_groups_of_at_most_the_limit_each_answered_with_its_own_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: EngineClient, store: _Store) -> list[BatchOutput]:
        return await asyncio.gather(*(infer(client, image(i)) for i in range(10)))

    store = _Store()
    outs = _run(tmp_path, monkeypatch, body, store)
    assert store.enqueued == [(4, 4), (4, 4), (2, 2)]  # ten submits of one turn: three engine requests
    for i, out in enumerate(outs):
        assert out.outputs.tolist() == [[float(i)] * 4] and out.finite is True  # its own row, nobody else's
    # the engine counted the requests, not the groups: statistics and the queue-time histogram
    assert store.observer.snapshot().success.count == 10
    assert store.metric("vitserve_queue_duration_seconds_count", model="m", version="1") == 10
    assert store.metric("vitserve_inferences_total", model="m", version="1") == 10


def test_a_multi_image_submit_goes_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: EngineClient, store: _Store) -> list[BatchOutput]:
        pair = np.concatenate([image(7), image(8)])
        return await asyncio.gather(infer(client, image(1)), infer(client, pair), infer(client, image(2)))

    store = _Store()
    one, pair, two = _run(tmp_path, monkeypatch, body, store)
    assert sorted(store.enqueued) == [(2, 1), (2, 2)]  # the pair alone (one request), the two singles together
    assert pair.outputs.tolist() == [[7.0] * 4, [8.0] * 4]
    assert one.outputs.tolist() == [[1.0] * 4] and two.outputs.tolist() == [[2.0] * 4]


def test_a_non_finite_row_fails_only_its_own_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: EngineClient, store: _Store) -> list[BatchOutput]:
        return await asyncio.gather(infer(client, image(1)), infer(client, image(math.nan)), infer(client, image(3)))

    store = _Store()
    good, bad, also_good = _run(tmp_path, monkeypatch, body, store)
    assert store.enqueued == [(3, 3)]
    assert [good.finite, bad.finite, also_good.finite] == [True, False, True]
    assert good.outputs.tolist() == [[1.0] * 4] and also_good.outputs.tolist() == [[3.0] * 4]
    counts = store.observer.snapshot()
    assert (counts.success.count, counts.fail.count) == (2, 1)  # as three requests answered one by one


def test_only_submits_with_deadlines_within_the_slack_share_a_group_and_it_keeps_the_earliest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deadlines: list[float | None] = []

    async def body(client: EngineClient, store: _Store) -> list[BatchOutput]:
        enqueue = store.executor.enqueue

        def seeing(inputs: np.ndarray, deadline: float | None = None, requests: int = 1) -> Any:
            deadlines.append(deadline)
            return enqueue(inputs, deadline, requests)

        store.executor.enqueue = seeing  # type: ignore[method-assign]
        now = asyncio.get_running_loop().time()  # the batcher's clock: time.monotonic, as the loop's
        soon, later = now + 5, now + 5 + 10 * GROUP_DEADLINE_SLACK_S
        return await asyncio.gather(infer(client, image(1), soon + GROUP_DEADLINE_SLACK_S / 2),
                                    infer(client, image(2), soon), infer(client, image(3), later),
                                    infer(client, image(4), None), infer(client, image(5), None))

    store = _Store()
    outs = _run(tmp_path, monkeypatch, body, store)
    assert sorted(store.enqueued) == [(1, 1), (2, 2), (2, 2)]
    assert [o.outputs[0, 0] for o in outs] == [1, 2, 3, 4, 5]
    assert deadlines[0] is not None and deadlines[1] is not None and deadlines[2] is None
    assert deadlines[1] - deadlines[0] == pytest.approx(10 * GROUP_DEADLINE_SLACK_S)  # the earliest of the two


def test_an_expired_group_is_counted_as_its_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: EngineClient, store: _Store) -> list[BaseException | BatchOutput]:
        past = asyncio.get_running_loop().time() - 1
        return await asyncio.gather(*(infer(client, image(i), past) for i in range(3)), return_exceptions=True)

    store = _Store()
    results = _run(tmp_path, monkeypatch, body, store)
    assert all(isinstance(r, DeadlineExceeded) for r in results)
    assert store.metric("vitserve_deadline_expired_total", model="m") == 3
    assert store.observer.snapshot().fail.count == 3


def test_cancelled_submits_leave_their_group_and_a_group_left_empty_is_cancelled_in_the_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    computed: list[int] = []

    def held(batch: np.ndarray) -> np.ndarray:  # the first batch holds the worker, so later groups stay queued
        release.wait(5)
        computed.append(len(batch))
        return _echo(batch)

    async def body(client: EngineClient, store: _Store) -> tuple[list[Any], list[tuple[int, int]], int]:
        first = asyncio.ensure_future(infer(client, image(0)))
        await asyncio.sleep(0.05)  # sent and computing (held)
        gone_early = asyncio.ensure_future(infer(client, image(1)))
        kept = asyncio.ensure_future(infer(client, image(2)))
        gone_early.cancel()  # in the same turn, before its group is sent: it leaves the group
        queued = [asyncio.ensure_future(infer(client, image(3 + i))) for i in range(2)]
        await asyncio.sleep(0.05)  # kept + queued: one group of three, queued behind the held batch
        for task in queued:
            task.cancel()  # kept is still in it: the group stays
        await asyncio.sleep(0.05)
        last = [asyncio.ensure_future(infer(client, image(9))) for _ in range(2)]
        await asyncio.sleep(0.05)
        for task in last:
            task.cancel()  # every submit of this group is gone: the engine withdraws it
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, gone_early, kept, *queued, *last, return_exceptions=True)
        for _ in range(100):  # the blocks are freed when the engine answers
            if client.arena.free_bytes() == sum(s.size for s in client.arena.segments.values()):
                break
            await asyncio.sleep(0.01)
        used = sum(s.size for s in client.arena.segments.values()) - client.arena.free_bytes()
        return results, list(store.enqueued), used

    results, enqueued, used = _run(tmp_path, monkeypatch, body, _Store(held))
    first, gone_early, kept, *rest = results
    assert first.outputs.tolist() == [[0.0] * 4] and kept.outputs.tolist() == [[2.0] * 4]
    assert all(isinstance(r, asyncio.CancelledError) for r in [gone_early, *rest])
    assert enqueued == [(1, 1), (3, 3), (2, 2)]  # the early-cancelled submit never reached the engine
    assert computed == [1, 3]  # the group left empty was withdrawn from the queue, never computed
    assert used == 0  # every block back, the withdrawn group's too


def test_without_shared_memory_a_group_travels_inline_and_each_gets_its_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import transport

    async def body(client: EngineClient, store: _Store) -> list[BatchOutput]:
        monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path / "missing")  # creating a segment fails
        return await asyncio.gather(*(infer(client, image(i)) for i in range(3)))

    store = _Store()
    outs = _run(tmp_path, monkeypatch, body, store)
    assert store.enqueued == [(3, 3)]
    assert [o.outputs.tolist() for o in outs] == [[[float(i)] * 4] for i in range(3)]


def test_a_group_that_cannot_be_sent_fails_its_requests_and_keeps_no_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers.transport import Segment

    async def body(client: EngineClient, store: _Store) -> tuple[list[Any], int, int, BatchOutput]:
        write = Segment.write

        def broken(self: Segment, offset: int, array: np.ndarray) -> None:
            raise RuntimeError("the block could not be written")

        monkeypatch.setattr(Segment, "write", broken)
        failed = await asyncio.gather(*(infer(client, image(i)) for i in range(3)), return_exceptions=True)
        monkeypatch.setattr(Segment, "write", write)
        used = sum(s.size for s in client.arena.segments.values()) - client.arena.free_bytes()
        return failed, used, len(client._pending), await infer(client, image(5))  # noqa: SLF001 - no request may be left pending

    store = _Store()
    failed, used, pending, after = _run(tmp_path, monkeypatch, body, store)
    assert [type(f).__name__ for f in failed] == ["InferenceFailed"] * 3
    assert "sending the request to the engine failed (RuntimeError)" in str(failed[0])
    assert (used, pending) == (0, 0)  # its block back, nothing left waiting for an answer that cannot come
    assert after.outputs.tolist() == [[5.0] * 4] and store.enqueued == [(1, 1)]  # the next request is served


def test_a_submit_cancelled_just_before_its_group_is_sent_neither_fails_nor_cancels_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its future is cancelled at once, its task resumes only after the turn's frame went out: by then the group
    was sent without it (or not at all), and its leaving must not count against the submits still in it."""

    async def body(client: EngineClient, store: _Store) -> list[Any]:
        alone = asyncio.ensure_future(infer(client, image(1)))
        await asyncio.sleep(0)  # it joined a group; the frame is due at the end of this turn
        alone.cancel()
        gone, kept = asyncio.ensure_future(infer(client, image(2))), asyncio.ensure_future(infer(client, image(3)))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(alone, gone, kept, return_exceptions=True)

    store = _Store()
    alone, gone, kept = _run(tmp_path, monkeypatch, body, store)
    assert isinstance(alone, asyncio.CancelledError) and isinstance(gone, asyncio.CancelledError)
    assert kept.outputs.tolist() == [[3.0] * 4] and store.enqueued == [(1, 1)]
