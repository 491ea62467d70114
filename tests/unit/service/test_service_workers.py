"""The multi-process front end's parts alone: shared-memory arena, control channel, error codec, stand-in."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.batcher import Batcher, BatchLimits, BatchOutput
from service.errors import InferenceFailed, ModelNotFound, Overloaded, ServiceError
from service.loader import build_version
from service.metrics import Metrics
from service.repository import read_model
from service.runtimes import runtime_backend
from service.runtimes.standin import OffCpuRuntime, standin_outputs, write_standin_model
from service.settings import Settings
from service.workers import protocol as msg
from service.workers.client import EngineClient
from service.workers.engine import EngineServer
from service.workers.protocol import decode_error, encode_error
from service.workers.transport import Arena, Channel, Segment


def test_arena_blocks_are_shared_reused_and_merged() -> None:
    arena = Arena("vitserve-test-arena", first_segment_bytes=4096, max_segment_bytes=4096)
    try:
        a, created = arena.allocate(1000)
        assert created is not None and a.segment == 0 and a.offset == 0
        b, created_b = arena.allocate(1000)
        assert created_b is None and b.offset >= 1000 and b.offset % 64 == 0
        # another process maps the segment by its path and sees what was written
        other = Segment(created.path, 0, create=False)
        arena.segments[0].array(b.offset, (4,), "<f4")[...] = [1, 2, 3, 4]
        assert other.array(b.offset, (4,), "<f4").tolist() == [1, 2, 3, 4]
        other.close()
        held, _ = arena.allocate(1000)  # keeps segment 0 in use (an idle one smaller than the largest goes)
        assert held.segment == 0
        big, created_big = arena.allocate(10_000)  # larger than a segment: a segment of its own
        assert created_big is not None and big.segment == 1 and created_big.size >= 10_000
        before = arena.free_bytes()
        arena.release(a)
        arena.release(b)  # freed neighbours merge back into one block: the first fit is at offset 0 again
        assert arena.free_bytes() == before + a.size + b.size
        c, _ = arena.allocate(2000)
        assert (c.segment, c.offset) == (0, 0)
    finally:
        arena.close()
    assert not any(s.path.exists() for s in arena.segments.values())


def test_channel_carries_messages_across_partial_reads() -> None:
    async def main() -> list[object]:
        received: list[object] = []
        lost = asyncio.Event()
        left, right = socket.socketpair()
        loop = asyncio.get_running_loop()
        _, sender = await loop.create_connection(lambda: Channel(received.append, lost.set), sock=left)
        _, receiver = await loop.create_connection(lambda: Channel(received.append, lost.set), sock=right)
        for i in range(50):
            sender.send(msg.Result(i, np.zeros(3).tobytes()))
        sender.send(msg.Result(50, b"x" * 300_000))
        while len(received) < 51:
            await asyncio.sleep(0.01)
        sender.close()
        await asyncio.wait_for(lost.wait(), 5)
        receiver.close()
        return received

    received = asyncio.run(main())
    assert received[:50] == [msg.Result(i, np.zeros(3).tobytes()) for i in range(50)]
    assert received[50] == msg.Result(50, b"x" * 300_000) and type(received[50]) is msg.Result


def test_the_messages_of_one_loop_turn_go_as_one_frame() -> None:
    """A batch's worth of answers is one pickling and one write: what the reader gets is one frame."""

    async def main() -> bytes:
        left, right = socket.socketpair()
        loop = asyncio.get_running_loop()
        _, sender = await loop.create_connection(lambda: Channel(lambda m: None, lambda: None), sock=left)
        for i in range(20):
            sender.send(msg.Cancel(i))
        await asyncio.sleep(0.05)
        right.setblocking(False)
        data = right.recv(1 << 16)
        sender.close()
        right.close()
        return data

    data = asyncio.run(main())
    (length,) = struct.unpack("!I", data[:4])
    assert len(data) == 4 + length  # one frame, nothing after it
    # plain tuples on the wire (the kind's code, then the fields): they pickle as fast as tuples do
    assert pickle.loads(data[4:]) == [(msg.KINDS.index(msg.Cancel), i) for i in range(20)]


def test_engine_errors_come_back_as_the_same_class() -> None:
    error = decode_error(*encode_error(Overloaded("model m queue is full", retry_after_s=3.2)))
    assert isinstance(error, Overloaded) and error.headers() == {"Retry-After": "4"}
    assert type(decode_error("NoSuchError", "boom", 0.0)).__name__ == "InferenceFailed"


def test_standin_model_loads_through_the_repository_and_computes_a_gather(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_STANDIN_BATCH_MS", "0")
    write_standin_model(tmp_path, "standin", size=8, num_classes=5, max_batch_size=4)
    entry = read_model(tmp_path, "standin")
    backend = runtime_backend(entry.config.runtime_key)  # the runtimes table serves the stand-in's platform
    runtime = build_version(entry, 1, Settings(repository=tmp_path, warmup="one"), backend, None)
    assert isinstance(runtime, OffCpuRuntime) and runtime.provider == "OffCpuStandIn"
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = runtime.run(x)
    assert out.shape == (3, 5) and out.dtype == np.float32
    assert np.array_equal(out, standin_outputs(x, 5)) and np.array_equal(out[1], x[1].ravel()[::38][:5])
    with pytest.raises(ValueError):
        runtime.run(np.zeros((5, 3, 8, 8), np.float32))  # above the max batch, as a real session would refuse


def _echo(batch: np.ndarray) -> np.ndarray:
    """A runtime that returns its inputs flattened to (n, 4)."""
    return np.ascontiguousarray(batch.reshape(batch.shape[0], -1)[:, :4])


class _NullObserver:
    def request_succeeded(self, total_s: float, queue_s: float, compute_s: float, count: int = 1) -> None: ...

    def request_failed(self, total_s: float, count: int = 1) -> None: ...


class _EngineStore:
    """The part of a `ModelStore` the engine's connection uses: one model "m", version 1."""

    def __init__(self) -> None:
        self.executor = Batcher(_echo, BatchLimits(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=64),
                                name="m")
        self.metrics = Metrics()
        self.listeners: list[object] = []
        self._models: dict[str, object] = {}
        self._initial_done = True
        self.draining = False

    def version(self, model: str, version: int) -> SimpleNamespace:
        self.executor.start()  # on the engine's loop, at its first request
        return SimpleNamespace(executor=self.executor, observer=_NullObserver())

    def is_model_ready(self, model: str) -> bool:
        return True

    async def statistics(self, name: str | None = None, version: int | None = None) -> list[str]:
        if name not in (None, "m"):
            raise ModelNotFound(f"unknown model {name}")
        return [f"m:{version or 1}"]

    async def load(self, name: str) -> None:
        raise Overloaded("busy", retry_after_s=7.0)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


async def _engine_and_client(tmp_path: Path) -> tuple[EngineServer, EngineClient]:
    app = SimpleNamespace(state=SimpleNamespace(store=_EngineStore()))
    server = EngineServer(app, tmp_path / "engine.sock")  # type: ignore[arg-type]
    await server.start()
    client = EngineClient(tmp_path / "engine.sock")
    await client.connect()
    return server, client


def test_without_shared_memory_the_tensor_travels_inline_and_is_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path / "missing")  # creating a segment fails

    async def main() -> BatchOutput:
        server, client = await _engine_and_client(tmp_path)
        try:
            return await client.infer("m", 1, np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), None, 32)
        finally:
            await client.close()
            await server.close()

    out = asyncio.run(main())
    assert out.outputs.tolist() == [[0, 1, 2, 3], [12, 13, 14, 15]]


def test_whether_the_outputs_are_finite_comes_back_with_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found once per batch in the engine: the front end does not scan its rows again."""
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)

    async def main() -> list[bool | None]:
        server, client = await _engine_and_client(tmp_path)
        try:
            good = await client.infer("m", 1, np.ones((1, 3, 2, 2), np.float32), None, 16)
            bad = await client.infer("m", 1, np.full((1, 3, 2, 2), np.nan, np.float32), None, 16)
            return [good.finite, bad.finite]
        finally:
            await client.close()
            await server.close()

    assert asyncio.run(main()) == [True, False]


def test_a_failure_while_answering_still_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine answers from a callback: an error there must reach the front end, not only the log."""
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)

    class Broken(_NullObserver):
        def request_succeeded(self, total_s: float, queue_s: float, compute_s: float, count: int = 1) -> None:
            raise RuntimeError("statistics broke")

    async def main() -> str:
        server, client = await _engine_and_client(tmp_path)
        store = server.store

        def version(model: str, version: int) -> SimpleNamespace:
            store.executor.start()
            return SimpleNamespace(executor=store.executor, observer=Broken())

        monkeypatch.setattr(store, "version", version)
        try:
            with pytest.raises(InferenceFailed) as failed:
                await asyncio.wait_for(client.infer("m", 1, np.ones((1, 3, 2, 2), np.float32), None, 16), 5)
            return failed.value.message
        finally:
            await client.close()
            await server.close()

    assert asyncio.run(main()) == "inference failed (RuntimeError)"


def test_the_arena_grows_geometrically_and_gives_idle_segments_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)
    arena = Arena("vitserve-test-grow", first_segment_bytes=4096, max_segment_bytes=16384)
    try:
        a, first = arena.allocate(3000)
        b, second = arena.allocate(3000)  # does not fit: a segment twice the largest
        c, third = arena.allocate(9000)  # nor this one: twice again, capped at the maximum
        assert first is not None and second is not None and third is not None
        assert (first.size, second.size, third.size) == (4096, 8192, 16384)
        assert arena.release(b) == [b.segment]  # idle and smaller than the largest: released, its file gone
        assert not second.path.exists() and b.segment not in arena.segments
        assert arena.release(c) == []  # the largest one is kept, idle or not
        assert arena.release(a) == [a.segment]
        assert list(arena.segments) == [c.segment] and [p.name for p in tmp_path.iterdir()] == [third.path.name]
    finally:
        arena.close()


def test_a_cancel_in_the_same_read_as_its_submit_is_answered(tmp_path: Path) -> None:
    async def main() -> list[object]:
        app = SimpleNamespace(state=SimpleNamespace(store=_EngineStore()))
        server = EngineServer(app, tmp_path / "engine.sock")  # type: ignore[arg-type]
        await server.start()
        got: list[object] = []
        _, front = await asyncio.get_running_loop().create_unix_connection(
            lambda: Channel(got.append, lambda: None), str(tmp_path / "engine.sock"))
        x = np.ones((1, 3, 2, 2), np.float32)
        front.send(msg.Submit(7, "m", 1, None, 0, 0, x.shape, x.dtype.str, None, x, 1))
        front.send(msg.Cancel(7))  # both written in one turn: the engine reads them together
        for _ in range(100):
            if any(getattr(m, "rid", None) == 7 for m in got):
                break
            await asyncio.sleep(0.01)
        front.close()
        await server.close()
        return [m for m in got if not isinstance(m, msg.Table)]

    assert asyncio.run(main()) == [msg.Cancelled(7)]


def test_a_call_answers_the_engine_stores_value_or_raises_its_error_as_the_same_class(tmp_path: Path) -> None:
    """What only the engine knows, asked from a front end: the value, or the domain error with its fields."""

    async def main() -> tuple[object, ServiceError, ServiceError, ServiceError]:
        server, client = await _engine_and_client(tmp_path)
        errors: list[ServiceError] = []
        try:
            value = await client.call("statistics", "m", 2)
            for op, args in (("statistics", ("nope", None)), ("load", ("m",)), ("version", ("m", 1))):
                with pytest.raises(ServiceError) as raised:
                    await client.call(op, *args)
                errors.append(raised.value)
            return value, *errors
        finally:
            await client.close()
            await server.close()

    value, unknown, busy, not_a_call = asyncio.run(main())
    assert value == ["m:2"]
    assert type(unknown) is ModelNotFound and unknown.message == "unknown model nope"
    assert type(busy) is Overloaded and busy.retry_after_s == 7.0
    assert type(not_a_call) is InferenceFailed and "no engine call 'version'" in not_a_call.message


def test_released_segments_are_unmapped_by_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)

    async def main() -> tuple[list[int], list[int]]:
        server, client = await _engine_and_client(tmp_path)
        client.arena.first_segment_bytes = 4096
        try:
            small = np.ones((1, 3, 8, 8), np.float32)
            await client.infer("m", 1, small, None, 16)  # segment 0: 4 KiB
            await client.infer("m", 1, np.ones((4, 3, 16, 16), np.float32), None, 64)  # needs a bigger one
            await client.infer("m", 1, small, None, 16)  # fits the big one; the small one is idle: released
            await asyncio.sleep(0.05)
            return list(client.arena.segments), list(next(iter(server.connections)).segments)
        finally:
            await client.close()
            await server.close()

    assert asyncio.run(main()) == ([1], [1])


def test_a_failed_segment_leaves_no_file_and_the_next_allocation_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)
    real_fallocate = transport.os.posix_fallocate
    calls = 0

    def fallocate_failing_once(fd: int, offset: int, size: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")
        real_fallocate(fd, offset, size)

    monkeypatch.setattr(transport.os, "posix_fallocate", fallocate_failing_once)
    arena = Arena("vitserve-test-fail", first_segment_bytes=4096)
    try:
        with pytest.raises(OSError):
            arena.allocate(1000)
        assert list(tmp_path.iterdir()) == []  # the half-made file is gone
        block, created = arena.allocate(1000)  # a fresh name: no EEXIST from the failed one
        assert created is not None and created.path.exists()
    finally:
        arena.close()


def test_a_front_ends_route_that_needs_the_engine_without_it_is_the_json_503(tmp_path: Path) -> None:
    import httpx

    from service.app import create_app
    from service.workers.mirror import MirrorStore

    async def main() -> httpx.Response:
        client = EngineClient(tmp_path / "engine.sock")  # never connected: the engine is not reachable
        app = create_app(Settings(repository=tmp_path), store=MirrorStore(Settings(repository=tmp_path), Metrics(),
                                                                          client))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fe") as http:
            return await http.get("/v2/models/stats")

    response = asyncio.run(main())
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {"error": "the inference engine is not reachable"}


def test_a_draining_front_end_turns_the_engines_readiness_off_and_requests_still_go(tmp_path: Path) -> None:
    from service.workers.mirror import MirrorStore

    async def main() -> tuple[float, float, list[list[float]]]:
        server, client = await _engine_and_client(tmp_path)
        engine_metrics = server.store.metrics
        engine_metrics.server_ready.set(1.0)
        mirror = MirrorStore(Settings(repository=tmp_path), Metrics(), client)
        try:
            before = engine_metrics.server_ready._value.get()
            mirror.begin_drain()
            for _ in range(100):
                if engine_metrics.server_ready._value.get() == 0.0:
                    break
                await asyncio.sleep(0.01)
            out = await client.infer("m", 1, np.ones((1, 3, 2, 2), np.float32), None, 16)
            return before, engine_metrics.server_ready._value.get(), out.outputs.tolist()
        finally:
            await client.close()
            await server.close()

    assert asyncio.run(main()) == (1.0, 0.0, [[1.0, 1.0, 1.0, 1.0]])


_METRICS_SCRIPT = """
from service.manifest import Evaluation
from service.metrics import Metrics
m = Metrics()
m.inferences.labels(model="m", version="1").inc(3)
m.set_accuracy("m", Evaluation(top1=0.5, top5=0.9))
m.set_accuracy("m", Evaluation(top1=0.75))  # a reload: the old series must go
print(m.render().decode())
"""


def _render_in_a_process(env: dict[str, str]) -> str:
    """`Metrics.render` where PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is imported."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _METRICS_SCRIPT], env={**os.environ, **env}, check=True,
                          capture_output=True, text=True, timeout=60).stdout


def test_workers_metrics_forget_a_removed_gauge_series(tmp_path: Path) -> None:
    text = _render_in_a_process({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "VITSERVE_METRICS_DIR": str(tmp_path)})
    accuracy = [line for line in text.splitlines() if line.startswith("vitserve_model_accuracy{")]
    assert accuracy == ['vitserve_model_accuracy{dataset="unknown",metric="top1",model="m"} 0.75']
    assert 'vitserve_inferences_total{model="m",version="1"} 3.0' in text  # summed from the directory


def test_an_inherited_prometheus_multiproc_dir_alone_leaves_metrics_single_process(tmp_path: Path) -> None:
    (tmp_path / "counter_99999.db").write_bytes(b"")  # another server's leftovers there are not summed in
    text = _render_in_a_process({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert 'vitserve_inferences_total{model="m",version="1"} 3.0' in text
    assert 'vitserve_model_accuracy{dataset="unknown",metric="top1",model="m"} 0.75' in text


def test_max_connections_is_divided_among_the_front_ends(tmp_path: Path) -> None:
    from service.http_protocol import guarded_protocol
    from service.workers.supervisor import front_end_settings

    settings = Settings(repository=tmp_path, http_workers=3, max_connections=100)
    assert guarded_protocol(front_end_settings(settings)).max_connections == 34  # 3 x 34 >= 100, rounded up
    assert front_end_settings(Settings(repository=tmp_path, http_workers=1, max_connections=100)).max_connections == 100


@pytest.mark.parametrize("supervisor_killed", [True, False])
def test_an_orphaned_engine_removes_the_supervisors_directory(tmp_path: Path, supervisor_killed: bool) -> None:
    import multiprocessing

    from service.workers.engine import _serve_engine

    run_dir = tmp_path / "vitserve-run"
    (run_dir / "metrics").mkdir(parents=True)
    ours, engines = multiprocessing.Pipe()

    async def main() -> None:
        no_grpc = SimpleNamespace(settings=SimpleNamespace(grpc_port=0))  # the engine serves gRPC from its pipeline
        app = SimpleNamespace(state=SimpleNamespace(store=_EngineStore(), pipeline=no_grpc))
        engine = asyncio.get_running_loop().create_task(_serve_engine(app, run_dir / "engine.sock", engines))
        while not ours.poll():
            await asyncio.sleep(0.01)
        assert ours.recv() == "listening"
        if supervisor_killed:
            ours.close()  # the pipe closes: what a SIGKILL of the supervisor does
        else:
            ours.send("stop")  # a clean stop: the supervisor removes its directory itself
        await asyncio.wait_for(engine, 10)

    asyncio.run(main())
    assert run_dir.exists() is not supervisor_killed


def test_the_supervisor_removes_a_reaped_front_ends_shared_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import transport
    from service.workers.supervisor import remove_shared_memory

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path)
    for name in ("vitserve-4242-ab12-0", "vitserve-4242-ab12-3", "vitserve-42420-cd34-0"):
        (tmp_path / name).write_bytes(b"x")
    remove_shared_memory(4242)
    assert [p.name for p in tmp_path.iterdir()] == ["vitserve-42420-cd34-0"]


def test_a_crash_looping_front_end_is_restarted_with_a_growing_delay_not_a_busy_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import supervisor as sup

    sup_ = sup.Supervisor(Settings(repository=tmp_path, http_workers=1))
    monkeypatch.setattr(sup, "remove_shared_memory", lambda pid: None)
    dead = SimpleNamespace(is_alive=lambda: False, pid=None, exitcode=1, sentinel=object())
    engine = SimpleNamespace(is_alive=lambda: True, sentinel=object())
    sup_.workers[0], sup_.started_at[0] = dead, 0.0
    waits: list[tuple[int, float]] = []
    clock = [0.5]  # the front end died 0.5 s after it started: young
    starts: list[float] = []

    def fake_wait(objects: list[object], timeout: float) -> list[object]:
        waits.append((len(objects), timeout))
        clock[0] += timeout
        if len(waits) > 150:
            sup_.stopping = True
        return []

    def fake_start(index: int, sock: object) -> None:  # it dies young again at once
        starts.append(clock[0])
        sup_.started_at[index] = clock[0]
        clock[0] += 0.5

    monkeypatch.setattr(sup, "wait", fake_wait)
    monkeypatch.setattr(sup.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sup_, "_start_worker", fake_start)
    sup_._watch(engine, None)  # type: ignore[arg-type]
    # a dead front end's sentinel (always ready) is waited on once per death, then only the engine's: no spinning
    assert sum(n == 2 for n, _ in waits) == len(starts) + 1 and all(timeout > 0 for _, timeout in waits)
    # it lived 0.5 s; its death is seen a tick (0.2 s) later, then it waits 1, 2, 4... s
    gaps = [round(b - a - 0.5, 1) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[:3] == [2.2, 4.2, 8.2] and sup_._restart_delay(0, 5.0) == 0.0
    assert sup_._restart_delay(0, 0.1) == 1.0 and max(sup.MIN_WORKER_LIFE_S * 2 ** k for k in range(10)) > 30
    for _ in range(10):
        delay = sup_._restart_delay(0, 0.1)
    assert delay == sup.MAX_RESTART_DELAY_S
