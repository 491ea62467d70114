"""The multi-process front end's parts alone: shared-memory arena, control channel, error codec, stand-in."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from service.errors import Overloaded
from service.loader import build_version
from service.repository import read_model
from service.runtimes import runtime_backend
from service.runtimes.standin import OffCpuRuntime, standin_outputs, write_standin_model
from service.settings import Settings
from service.workers.protocol import decode_error, encode_error
from service.workers.transport import Arena, Channel, Segment


def test_arena_blocks_are_shared_reused_and_merged() -> None:
    arena = Arena("vitserve-test-arena", segment_bytes=4096)
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
        big, created_big = arena.allocate(10_000)  # larger than a segment: a segment of its own
        assert created_big is not None and big.segment == 1 and created_big.size >= 10_000
        before = arena.free_bytes()
        arena.release(a)
        arena.release(b)  # freed neighbours merge back into one block: the first fit is at offset 0 again
        assert arena.free_bytes() == before + a.size + b.size
        c, _ = arena.allocate(3000)
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
            sender.send(("submit", i, "m", np.zeros(3).tobytes()))
        sender.send(("big", b"x" * 300_000))
        while len(received) < 51:
            await asyncio.sleep(0.01)
        sender.close()
        await asyncio.wait_for(lost.wait(), 5)
        receiver.close()
        return received

    received = asyncio.run(main())
    assert [m[1] for m in received[:50]] == list(range(50))  # type: ignore[index]
    assert received[50] == ("big", b"x" * 300_000)


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


def test_a_full_shared_memory_refuses_the_request_with_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.workers import client as client_module
    from service.workers import transport

    monkeypatch.setattr(transport, "shm_directory", lambda: tmp_path / "missing")  # creating a segment fails
    engine = client_module.EngineClient(tmp_path / "engine.sock")
    with pytest.raises(Overloaded) as caught:
        asyncio.run(engine.infer("m", 1, np.zeros((1, 3, 8, 8), np.float32), None, 40))
    assert caught.value.status == 503 and caught.value.headers() == {"Retry-After": "1"}


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
    arena = Arena("vitserve-test-fail", segment_bytes=4096)
    try:
        with pytest.raises(OSError):
            arena.allocate(1000)
        assert list(tmp_path.iterdir()) == []  # the half-made file is gone
        block, created = arena.allocate(1000)  # a fresh name: no EEXIST from the failed one
        assert created is not None and created.path.exists()
    finally:
        arena.close()
