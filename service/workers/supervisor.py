"""`vitserve serve --http-workers N`: one engine process, N front-end processes on one port.

The supervisor binds the listening socket, starts the engine (service/workers/engine.py) and, once it listens
on its private unix socket, N front ends that accept on the inherited socket, taking turns
(service/workers/accept.py). Metrics are kept per process in prometheus_client's multiprocess directory and
summed by the engine's /metrics. A front end that dies is replaced (the engine drops its queued requests); a
dead engine stops the server (exit 1). SIGTERM/SIGINT: the front ends drain as the single process does, then
the engine is told to stop, drains what is left and closes its sessions; exit 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from service.metrics import WORKERS_METRICS_DIR_ENV
from service.settings import Settings
from service.workers.accept import NOT_ACCEPTING
from service.workers.child import configure_child

log = logging.getLogger("vitserve.supervisor")

ENGINE_START_TIMEOUT_S = 120.0
#: a front end that dies sooner than this after starting is restarted only after this long (no crash loop)
MIN_WORKER_LIFE_S = 1.0
#: the longest wait before restarting a front end that keeps dying young
MAX_RESTART_DELAY_S = 30.0
#: how often the watch loop looks at a signal's flag at the latest
WATCH_TICK_S = 0.2
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, open for the server's life and inherited by each front end: while front ends die
    or restart the kernel queues new connections, never refuses them."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _watch_parent() -> None:
    """A front end whose supervisor is gone (killed) drains and exits instead of serving on, orphaned."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vitserve-parent-watch", daemon=True).start()


def front_end_settings(settings: Settings) -> Settings:
    """One front end's share (1/N, rounded up) of the server-wide `max_connections` and body budget."""
    workers = max(1, settings.http_workers)
    return settings.model_copy(update={"max_connections": -(-settings.max_connections // workers),
                                       "max_body_bytes_in_flight": -(-settings.max_body_bytes_in_flight // workers)})


def worker_main(settings: Settings, sock: socket.socket, control_path: Path, index: int, slots: Any) -> None:
    """Front-end process entry point; `slots`: every front end's connection count, this one's at `index`."""
    settings = front_end_settings(settings)
    configure_child(settings, f"front end {index}", f"vitserve-fe{index}")
    _watch_parent()
    from service import gc_policy
    from service.app import create_app
    from service.metrics import Metrics
    from service.server import serve
    from service.workers.accept import ConnectionShares
    from service.workers.client import EngineClient
    from service.workers.mirror import MirrorStore

    app = create_app(settings, store=MirrorStore(settings, Metrics(), EngineClient(control_path)))
    gc_policy.install(app.state.store, settings.gc_freeze)
    serve(settings, app, sock=sock, shares=ConnectionShares(slots, index))


def remove_shared_memory(pid: int) -> None:
    """A reaped front end's arena files (those the engine had not mapped yet when it died)."""
    from service.workers.transport import shm_directory

    for path in shm_directory().glob(f"vitserve-{pid}-*"):
        path.unlink(missing_ok=True)


class Supervisor:
    """Starts and watches the engine and the front ends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.tmp = Path(tempfile.mkdtemp(prefix="vitserve-"))  # private (0700): the control socket lives here
        self.metrics_dir = self.tmp / "metrics"
        self.control_path = self.tmp / "engine.sock"
        self.workers: dict[int, BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        self.young_deaths: dict[int, int] = {}
        #: each front end's open connections, read by its siblings to take turns at accepting (accept.py)
        self.slots = self.ctx.RawArray("i", [NOT_ACCEPTING] * max(1, settings.http_workers))
        self.stopping = False

    def _start_worker(self, index: int, sock: socket.socket) -> None:
        self.slots[index] = NOT_ACCEPTING  # until it serves (a replacement starts from none)
        proc = self.ctx.Process(target=worker_main, args=(self.settings, sock, self.control_path, index, self.slots),
                                name=f"vitserve-frontend-{index}")
        proc.start()
        self.workers[index], self.started_at[index] = proc, time.monotonic()
        log.info("front end %d started (pid %s)", index, proc.pid)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            log.info("signal %d: draining %d front ends, then the engine", signum, len(self.workers))
        self.stopping = True

    def run(self) -> int:
        from service.workers.engine import engine_main

        self.metrics_dir.mkdir()
        os.environ[PROMETHEUS_DIR_ENV] = str(self.metrics_dir)  # before any process imports prometheus_client
        os.environ[WORKERS_METRICS_DIR_ENV] = str(self.metrics_dir)  # render sums the processes (workers mode)
        sock = bind_socket(self.settings.host, self.settings.port)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        parent_end, child_end = self.ctx.Pipe()
        engine = self.ctx.Process(target=engine_main, args=(self.settings, self.control_path, child_end),
                                  name="vitserve-engine")
        engine.start()
        child_end.close()
        started = False
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        try:  # in steps, so a signal meanwhile stops the start
            while not self.stopping and time.monotonic() < deadline and engine.is_alive():
                if parent_end.poll(0.2):
                    started = parent_end.recv() == "listening"
                    break
        except EOFError:
            started = False
        if not started:
            if not self.stopping:
                log.error("the engine did not start (exit code %s)", engine.exitcode)
            engine.kill()
            engine.join(5)
            self._cleanup(sock)
            return 0 if self.stopping else 1
        log.info("engine up (pid %s); listening on %s:%d with %d front ends", engine.pid, self.settings.host,
                 sock.getsockname()[1], self.settings.http_workers)
        for index in range(self.settings.http_workers):
            self._start_worker(index, sock)
        code = self._watch(engine, sock)
        self._stop_workers()
        try:
            parent_end.send("stop")
        except OSError:
            pass
        engine.join(self.settings.drain_timeout_s + 15)
        if engine.is_alive():
            engine.kill()
            engine.join(5)
        self._cleanup(sock)
        log.info("stopped")
        return code

    def _watch(self, engine: BaseProcess, sock: socket.socket) -> int:
        """Replace dead front ends until a signal arrives; 1 if the engine dies. One that keeps dying young is
        restarted after a growing delay, so it spins neither this loop nor the machine."""
        from prometheus_client import multiprocess

        restart_at: dict[int, float] = {}
        while not self.stopping:
            now = time.monotonic()
            timeout = min([WATCH_TICK_S, *(max(0.0, at - now) for at in restart_at.values())])
            wait([engine.sentinel, *(p.sentinel for i, p in self.workers.items() if i not in restart_at)],
                 timeout=timeout)
            if self.stopping:
                break
            if not engine.is_alive():
                log.error("the engine exited (code %s): stopping", engine.exitcode)
                return 1
            now = time.monotonic()
            for index, proc in list(self.workers.items()):
                if proc.is_alive():
                    continue
                if index not in restart_at:
                    delay = self._restart_delay(index, now - self.started_at[index])
                    log.warning("front end %d (pid %s) exited with code %s: replacing it%s", index, proc.pid,
                                proc.exitcode, f" in {delay:.0f} s" if delay else "")
                    self.slots[index] = NOT_ACCEPTING  # its siblings stop leaving connections to it
                    if proc.pid is not None:
                        multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))
                        remove_shared_memory(proc.pid)
                    restart_at[index] = now + delay
                if now >= restart_at[index]:
                    del restart_at[index]
                    self._start_worker(index, sock)
        return 0

    def _restart_delay(self, index: int, lived_s: float) -> float:
        """0 for a front end that ran a while; else MIN_WORKER_LIFE_S doubled per young death in a row."""
        if lived_s >= MIN_WORKER_LIFE_S:
            self.young_deaths[index] = 0
            return 0.0
        self.young_deaths[index] = deaths = self.young_deaths.get(index, 0) + 1
        return min(MAX_RESTART_DELAY_S, MIN_WORKER_LIFE_S * 2 ** (deaths - 1))

    def _stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + self.settings.shutdown_delay_s + 10
        for index, proc in self.workers.items():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("front end %d did not drain in time: killing it", index)
                proc.kill()
                proc.join(5)
            if proc.pid is not None and not proc.is_alive():
                remove_shared_memory(proc.pid)

    def _cleanup(self, sock: socket.socket) -> None:
        sock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def serve_workers(settings: Settings) -> int:
    """Run the multi-process server until a signal; the exit status."""
    return Supervisor(settings).run()
