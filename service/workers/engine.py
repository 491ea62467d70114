"""The engine process: the one process that owns the sessions and the batchers.

It runs the single-process server's app (`create_app`) without an HTTP listener; `EngineServer` feeds the
front ends' requests into the same per-version batchers, so batching stays global and there is one session per
device. What only the engine knows (repository load/unload, statistics, the gauges of the metrics exposition)
a front end's app asks for with a `Call` (`CALLS`), so every endpoint answers from any front end as the single
process answers it.

Only the supervisor stops the engine, after the front ends have drained (over its pipe; the pipe closing
means the supervisor is gone, and the engine then removes its directory). SIGTERM and SIGINT are ignored:
a signal to the whole process group must not stop it before the front ends have drained.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
from fastapi import FastAPI
from uvicorn.loops.auto import auto_loop_factory

from service.api.grpc import start_grpc
from service.batcher import Batcher, BatcherStopped, BatchOutput, PendingRequest
from service.catalog import LoadedVersion
from service.errors import InferenceFailed, ModelNotReady, ServiceError
from service.loader import ModelStore
from service.settings import Settings
from service.workers import protocol as msg
from service.workers.protocol import ModelRow, ModelTable, VersionRow
from service.workers.transport import Channel, Segment

log = logging.getLogger("vitserve.engine")


def model_table(store: ModelStore) -> ModelTable:
    """The store's models as the front ends mirror them."""
    models: dict[str, ModelRow] = {}
    for name, handle in store._models.items():  # noqa: SLF001 - the engine adapter reads the store's state
        versions = {
            v: VersionRow(lv.executor.limits, lv.runtime.provider, lv.runtime.provider_note)
            for v, lv in handle.versions.items()
        }
        generation = tuple((v, id(lv)) for v, lv in sorted(handle.versions.items()))
        models[name] = ModelRow(handle.state, handle.reason, handle.load_seconds, handle.entry, generation, versions)
    return ModelTable(store._initial_done, store.draining, models)  # noqa: SLF001 - the engine adapter reads the store's state


class EngineServer:
    """Serves the front ends' connections on a unix socket."""

    def __init__(self, app: FastAPI, path: Path) -> None:
        self.app = app
        self.store: ModelStore = app.state.store
        self.path = path
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        #: called when a front end starts draining (the gRPC health turns NOT_SERVING with the front ends)
        self.readiness_off: list[Callable[[], None]] = []

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(self._accept, path=str(self.path))
        self.store.listeners.append(self.models_changed)

    def _accept(self) -> Channel:
        conn = _Connection(self)
        self.connections.add(conn)
        return conn.channel

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.channel.close()

    def models_changed(self) -> None:
        table = msg.Table(model_table(self.store))
        for conn in self.connections:
            conn.send(table)


class _Connection:
    """One front-end process: its mapped segments and its requests in flight."""

    def __init__(self, server: EngineServer) -> None:
        self.server = server
        handlers: dict[type[Any], Callable[[Any], None]] = {
            msg.Submit: self._submit, msg.Cancel: self._cancel, msg.Call: self._call, msg.MapSegment: self._map,
            msg.Unmap: self._unmap, msg.ReadinessOff: self._readiness_off,
            msg.Hello: self._hello,
        }
        self.channel = Channel(lambda m: handlers[type(m)](m), self._on_lost)
        self.segments: dict[int, Segment] = {}
        #: inference requests in a batcher
        self.requests: dict[int, tuple[Batcher, PendingRequest]] = {}
        #: calls on the engine's state, each answered by a task
        self.calls: set[asyncio.Task[None]] = set()
        self.peer = "?"

    def send(self, message: Any) -> None:
        self.channel.send(message)

    def _hello(self, message: msg.Hello) -> None:
        self.peer = f"front end pid {message.pid}"
        self.send(msg.Table(model_table(self.server.store)))

    def _map(self, message: msg.MapSegment) -> None:
        path = Path(message.path)
        self.segments[message.segment] = Segment(path, 0, create=False)
        path.unlink(missing_ok=True)  # both processes map it now: nothing is left behind when either dies

    def _unmap(self, message: msg.Unmap) -> None:
        segment = self.segments.pop(message.segment, None)
        if segment is not None:
            segment.close()

    def _readiness_off(self, message: msg.ReadinessOff) -> None:
        self.server.store.metrics.server_ready.set(0.0)  # requests are still accepted: nothing stops
        for callback in self.server.readiness_off:
            callback()

    def _cancel(self, message: msg.Cancel) -> None:
        queued = self.requests.get(message.rid)
        if queued is not None:
            queued[0].withdraw(queued[1])  # its callback answers Cancelled

    def _on_lost(self) -> None:
        """Its process is gone (or stopping): its requests leave the queues, its memory is unmapped."""
        self.server.connections.discard(self)
        if self.requests:
            log.warning("%s disconnected with %d requests in flight", self.peer, len(self.requests))
        for executor, req in list(self.requests.values()):
            executor.withdraw(req)  # a batch already computing it keeps its view of the segment (see Segment.close)
        for segment in self.segments.values():
            segment.close()

    def _submit(self, sub: msg.Submit) -> None:
        """Into its version's batcher (no task: answered from its future's callback)."""
        store = self.server.store
        start = time.monotonic()
        lv = None
        try:
            try:
                lv = store.version(sub.model, sub.version)
            except ModelNotReady as exc:
                if store.is_model_ready(sub.model):  # swapped out meanwhile: the front end retries the new one
                    raise BatcherStopped(exc.message) from None
                raise
            segment = None if sub.segment is None else self.segments[sub.segment]
            if segment is not None:
                pixels = segment.array(sub.offset, sub.shape, sub.dtype)
            elif sub.inline is not None:
                pixels = sub.inline
            else:
                raise InferenceFailed("a request with neither a shared-memory block nor inline data")
            batcher = cast(Batcher, lv.executor)  # the engine's own store: its executors are batchers
            req = batcher.enqueue(pixels, sub.deadline, sub.requests)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            self._fail(sub, lv, start, exc)
            return
        self.requests[sub.rid] = (batcher, req)
        req.future.add_done_callback(lambda future: self._answer(sub, lv, segment, start, future))

    def _answer(self, sub: msg.Submit, lv: LoadedVersion, segment: Segment | None, start: float,
                future: asyncio.Future[BatchOutput]) -> None:
        self.requests.pop(sub.rid, None)
        if future.cancelled():
            self.send(msg.Cancelled(sub.rid))
            return
        requests = sub.requests
        try:
            out = future.result()
            outputs = out.outputs
            if segment is not None:
                if outputs.nbytes > sub.size:
                    raise InferenceFailed(f"model {sub.model} returned {outputs.nbytes} bytes, more than the block "
                                          "holds")
                segment.write(sub.offset, outputs)
            total = time.monotonic() - start
            finite = out.finite if out.finite is not None else bool(np.isfinite(outputs).all())
            bad = 0  # requests the front end answers 500 (service/pipeline.py's check), counted here as Triton does
            if not finite:  # in a group, only those whose own rows are not finite (the front end checks each)
                rows = np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)
                bad = requests if len(rows) != requests else int(requests - rows.sum())
                lv.observer.request_failed(total, bad)
            if requests > bad:
                lv.observer.request_succeeded(total, out.queue_s, out.compute_s, requests - bad)
            done = msg.Done(sub.rid, outputs.shape, outputs.dtype.str, out.queue_s, out.compute_s, out.batch_size,
                        np.ascontiguousarray(outputs) if segment is None else None, finite)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer (a callback's error would be lost)
            self._fail(sub, lv, start, exc)
            return
        self.send(done)

    def _fail(self, sub: msg.Submit, lv: LoadedVersion | None, start: float, exc: Exception) -> None:
        if not isinstance(exc, ServiceError):
            log.error("model %s: request from %s failed", sub.model, self.peer, exc_info=exc)
            exc = InferenceFailed(f"inference failed ({type(exc).__name__})")
        elif lv is not None and not isinstance(exc, BatcherStopped):
            lv.observer.request_failed(time.monotonic() - start, sub.requests)
        self.send(msg.Failed(sub.rid, *msg.encode_error(exc)))

    def _call(self, call: msg.Call) -> None:
        task = asyncio.get_running_loop().create_task(self._answer_call(call))
        self.calls.add(task)  # (a call outlives a front end that leaves: a load goes on, its answer goes nowhere)
        task.add_done_callback(self.calls.discard)

    async def _answer_call(self, call: msg.Call) -> None:
        store = self.server.store
        reply: msg.Result | msg.Failed
        try:
            if call.op not in CALLS:
                raise InferenceFailed(f"no engine call {call.op!r}")
            reply = msg.Result(call.rid, await getattr(store, call.op)(*call.args))
        except Exception as exc:  # noqa: BLE001 - every call gets an answer
            if not isinstance(exc, ServiceError):
                log.error("call %s from %s failed", call.op, self.peer, exc_info=exc)
                exc = InferenceFailed(f"{call.op} failed ({type(exc).__name__})")
            reply = msg.Failed(call.rid, *msg.encode_error(exc))
        if call.op in ("load", "unload"):  # what it changed reaches the front end before its answer
            self.send(msg.Table(model_table(store)))
        self.send(reply)


#: the store's methods a front end's app may call in the engine (`Call.op`), each answered with its value
CALLS = frozenset({"load", "unload", "statistics", "exposition"})


def engine_main(settings: Settings, control_path: Path, supervisor: Connection) -> None:
    """Process entry point (spawned by the supervisor, which alone stops it: see the module docstring)."""
    from service.workers.child import configure_child

    configure_child(settings, "engine", "vitserve-engine")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from service import gc_policy
    from service.app import create_app

    app = create_app(settings)
    gc_policy.install(app.state.store, settings.gc_freeze)
    with asyncio.Runner(loop_factory=auto_loop_factory()) as runner:  # the loop uvicorn picks for the front ends
        runner.run(_serve_engine(app, control_path, supervisor))


async def _serve_engine(app: FastAPI, control_path: Path, supervisor: Connection) -> None:
    store: ModelStore = app.state.store
    stop = asyncio.Event()
    orphaned = False

    def on_message() -> None:  # "stop", or the pipe closed: the supervisor is gone
        nonlocal orphaned
        try:
            supervisor.recv()
        except (EOFError, OSError):
            orphaned = True
        asyncio.get_running_loop().remove_reader(supervisor.fileno())
        stop.set()

    server = EngineServer(app, control_path)
    await server.start()
    await store.start()
    # gRPC is served here, beside the batchers (service/README.md, "Several front-end processes"); a port in use
    # fails the engine's start, and so the server's
    grpc_server = await start_grpc(app.state.pipeline, store)
    if grpc_server is not None:
        server.readiness_off.append(grpc_server.health.readiness_off)
    supervisor.send("listening")
    asyncio.get_running_loop().add_reader(supervisor.fileno(), on_message)
    await stop.wait()
    log.info("engine stopping: draining the batchers")
    if grpc_server is not None:  # its accepted calls answered first, then it stops
        store.begin_drain()
        await store.drained()
        await grpc_server.stop()
    await store.shutdown()
    await server.close()
    if orphaned:  # a killed supervisor cannot remove its directory (the control socket, the metrics)
        shutil.rmtree(control_path.parent, ignore_errors=True)
    log.info("engine stopped")
