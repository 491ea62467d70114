"""The engine process: the one process that owns the sessions and the batchers.

It runs the single-process server's app (`create_app`) without an HTTP listener; `EngineServer` feeds the
front ends' requests into the same per-version batchers, so batching stays global and there is one session per
device. Any other request is forwarded as HTTP and answered by the app in-process (`Forwarded`: its body
pulled from the front end as the app reads it, its client's departure a disconnect), so every endpoint
answers, refuses and cancels as in the single process.

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
from collections import deque
from collections.abc import Callable, MutableMapping
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
from service.http_protocol import DISCONNECT_WATCH, DisconnectWatchers
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
            msg.Submit: self._submit, msg.Cancel: self._cancel, msg.Body: self._body, msg.Http: self._forward,
            msg.MapSegment: self._map, msg.Unmap: self._unmap, msg.ReadinessOff: self._readiness_off,
            msg.Hello: self._hello,
        }
        self.channel = Channel(lambda m: handlers[type(m)](m), self._on_lost)
        self.segments: dict[int, Segment] = {}
        #: inference requests in a batcher
        self.requests: dict[int, tuple[Batcher, PendingRequest]] = {}
        #: forwarded HTTP requests, each answered by the app in a task
        self.forwards: dict[int, Forwarded] = {}
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
        forwarded = self.forwards.get(message.rid)
        if forwarded is not None:  # the app sees its client go, as the single-process server's app does
            forwarded.disconnect()

    def _body(self, message: msg.Body) -> None:
        forwarded = self.forwards.get(message.rid)
        if forwarded is not None:
            forwarded.deliver(message.piece, message.more)

    def _on_lost(self) -> None:
        """Its process is gone (or stopping): its requests leave the queues, its memory is unmapped."""
        self.server.connections.discard(self)
        if self.forwards or self.requests:
            log.warning("%s disconnected with %d requests in flight", self.peer,
                        len(self.forwards) + len(self.requests))
        for executor, req in list(self.requests.values()):
            executor.withdraw(req)  # a batch already computing it keeps its view of the segment (see Segment.close)
        tasks = [forwarded.task for forwarded in self.forwards.values() if forwarded.task is not None]
        for task in tasks:
            task.cancel()
        asyncio.get_running_loop().create_task(self._unmap_when_done(tasks))

    async def _unmap_when_done(self, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
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
            if finite:
                lv.observer.request_succeeded(total, out.queue_s, out.compute_s, requests)
            elif requests == 1:  # the front end answers 500 (service/pipeline.py's check); counted here as Triton does
                lv.observer.request_failed(total)
            else:  # a group: only the requests whose own rows are not finite fail (the front end checks each)
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

    def _forward(self, message: msg.Http) -> None:
        rid = message.rid
        forwarded = Forwarded(self, rid, message.complete)
        forwarded.task = task = asyncio.get_running_loop().create_task(self._http(forwarded, message.scope))
        self.forwards[rid] = forwarded
        task.add_done_callback(lambda _: self._finished(rid, task))

    def _finished(self, rid: int, task: asyncio.Task[None]) -> None:
        """A cancelled task (its front end gone or stopping) is answered here; `_http` answers every other."""
        self.forwards.pop(rid, None)
        if task.cancelled():
            self.send(msg.Cancelled(rid))

    async def _http(self, forwarded: Forwarded, scope: dict[str, Any]) -> None:
        """Answer a forwarded request with the app, in-process (no socket, no second HTTP parse)."""
        status, headers, chunks = 500, [], []

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.server.app({**scope, "type": "http", "asgi": {"version": "3.0"}, DISCONNECT_WATCH: forwarded},
                                  forwarded.receive, send)
        except Exception:  # noqa: BLE001 - the app's own handlers answered what they could
            log.exception("forwarded %s %s failed", scope.get("method"), scope.get("path"))
            status, headers, chunks = 500, [(b"content-type", b"application/json")], [b'{"error":"internal error"}']
        self.send(msg.HttpResponse(forwarded.rid, status, headers, b"".join(chunks)))


class Forwarded:
    """A forwarded request's connection as the engine's app sees it (`receive`, `watch_disconnect`): each
    `receive` asks the front end for the body's next piece (`More`), so the front end reads from its client
    only what the app reads; the client's departure (`Cancel`) is a disconnect."""

    def __init__(self, conn: _Connection, rid: int, complete: bool) -> None:
        self.conn = conn
        self.rid = rid
        self.task: asyncio.Task[None] | None = None
        self._pull = not complete  # pieces of the body are still to come from the front end
        self._ended = False  # the body's last piece was given to the app
        self._pieces: deque[asyncio.Future[tuple[bytes, bool] | None]] = deque()  # one per ask, in order
        self._gone = asyncio.Event()
        self._watchers = DisconnectWatchers()

    async def receive(self) -> dict[str, Any]:
        if not self._ended and not self._gone.is_set():
            piece: tuple[bytes, bool] | None = (b"", False)
            if self._pull:
                future: asyncio.Future[tuple[bytes, bool] | None] = asyncio.get_running_loop().create_future()
                self._pieces.append(future)
                self.conn.send(msg.More(self.rid))
                piece = await future
            if piece is not None:
                self._ended = not piece[1]
                return {"type": "http.request", "body": piece[0], "more_body": piece[1]}
        await self._gone.wait()  # the body is in: the next message is the client's departure
        return {"type": "http.disconnect"}

    def deliver(self, body: bytes, more: bool) -> None:
        while self._pieces:
            future = self._pieces.popleft()
            if not future.done():
                future.set_result((body, more))
                return

    def disconnect(self) -> None:
        if self._gone.is_set():
            return
        self._gone.set()
        while self._pieces:
            future = self._pieces.popleft()
            if not future.done():
                future.set_result(None)
        self._watchers.fire(soon=True)

    def watch_disconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when the client is gone; soon, if it already is."""
        self._watchers.add(callback)

    def unwatch_disconnect(self, callback: Callable[[], None]) -> None:
        self._watchers.remove(callback)


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
