"""Start and stop the servers a benchmark measures: loopback only, ready by polling, stopped by PID.

Every benchmark that needs a server (vitserve, the echo server, a peer) starts it here on a free
127.0.0.1 port, waits for its readiness URL with a deadline (never a fixed sleep) and stops it
by its own PID — SIGTERM, then SIGKILL after a grace period — so nothing else on the machine
is touched. Server output goes to a log file that is shown when start-up fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def poll_ok(request: str | urllib.request.Request, timeout_s: float, *, proc: subprocess.Popen[bytes] | None = None,
            interval_s: float = 0.2, attempt_timeout_s: float = 2.0) -> str | None:
    """Send `request` until it answers 200: None once it has, else the last failure when `timeout_s` passes.

    RuntimeError if `proc` exits first (the server died: waiting longer cannot help).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            url = request if isinstance(request, str) else request.full_url
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(request, timeout=attempt_timeout_s) as resp:
                if resp.status == 200:
                    return None
                last = f"status {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"status {e.code}: {e.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(interval_s)
    return last


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; raise RuntimeError when `timeout_s` passes or `proc` exits."""
    failure = poll_ok(url, timeout_s, proc=proc)
    if failure is not None:
        raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s ({failure})")


class ServerProcess:
    """A server subprocess as a context manager: started, awaited ready, stopped by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        ready_path: str,
        port: int,
        *,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 120.0,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.ready_path = ready_path
        self.env = env
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=self.cwd,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_ready(self.url + self.ready_path, self.ready_timeout_s, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; command: {' '.join(self.argv)}{self._log_tail()}") from None
        return self

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
        return f"\n--- {self.log_path} (tail) ---\n{tail}"

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the server's process group (its own, started with it), SIGKILL after `grace_s`."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def echo_server(port: int | None = None) -> ServerProcess:
    """The trivial echo server (bench/echo_server.py) for measuring the generator's own ceiling."""
    port = port or free_port()
    return ServerProcess(
        [sys.executable, "-m", "bench.echo_server", "--port", str(port)],
        ready_path="/",
        port=port,
        ready_timeout_s=30,
    )


def vitserve_server(
    repository: Path,
    models: Sequence[str] | None = None,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 300.0,
    warmup: str | None = "pow2",
    server_root: Path | None = None,
) -> ServerProcess:
    """`vitserve serve` on a free loopback port, serving `models` (all when None) from `repository`.

    Settings beyond repository/host/port go through `VITSERVE_*` environment variables (the
    service's pydantic-settings), e.g. `VITSERVE_MAX_QUEUE_DELAY_MS`; `env` overrides the defaults
    here (warnings-only log, CPU provider, power-of-two warm-up; `warmup=None` keeps the server's own
    default). `server_root`: run the service of another checkout (its directory is the server's
    working directory and first on its PYTHONPATH), e.g. to measure a commit before a change.
    """
    port = port or free_port()
    # CPU only (this machine has no GPU; skips the failing CUDA/TensorRT provider loads) and warm-up at the
    # power-of-two batch sizes (warming every size 1..max_batch takes minutes for vit_small on 2 cores)
    # no gRPC endpoint unless `env` names a VITSERVE_GRPC_PORT: benchmarks that run servers side by side would all
    # bind the default 8001
    full_env = {"VITSERVE_LOG_LEVEL": "warning", "VITSERVE_PROVIDERS": "CPUExecutionProvider",
                "VITSERVE_GRPC_PORT": "0"}
    if warmup is not None:
        full_env["VITSERVE_WARMUP"] = warmup
    if server_root is not None:
        root = str(Path(server_root).resolve())
        full_env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    if models:
        full_env["VITSERVE_MODELS"] = ",".join(models)
    full_env.update(env or {})
    argv = [
        sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())",
        "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
    ]
    return ServerProcess(argv, "/v2/health/ready", port, env=full_env, log_path=log_path,
                         ready_timeout_s=ready_timeout_s,
                         cwd=Path(server_root).resolve() if server_root is not None else None)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by a server: its process group and all its descendants (Linux /proc).

    Servers are started in their own session, so their group holds most workers they spawn (LitServe's
    inference worker, PyTriton's tritonserver); descendants are added for servers whose workers start a
    session of their own (BentoML's, Ray's). Processes that have exited are no longer counted.
    """
    return sum(group_cpu_by_name(pgid).values())


def main_thread_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of a process's main thread (/proc/PID/task/PID): a Python server's event
    loop, apart from its worker and compute threads. None when it cannot be read (no /proc, process gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def group_cpu_by_name(pgid: int) -> dict[str, float]:
    """`group_cpu_seconds` split by process name (/proc/PID/comm, e.g. vitserve-engine, vitserve-fe0)."""
    procs: dict[int, tuple[int, int, int, str]] = {}  # pid -> (ppid, pgrp, ticks, comm)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.find(b"(") + 1 : data.rfind(b")")].decode(errors="replace")
        fields = data[data.rfind(b")") + 2 :].split()
        # after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        procs[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12]), comm)
    members = {pid for pid, (_, pgrp, _, _) in procs.items() if pgrp == pgid}
    if pgid in procs:
        members.add(pgid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(members)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in members:
                members.add(child)
                stack.append(child)
    by_name: dict[str, float] = {}
    for pid in members:
        _, _, ticks, comm = procs[pid]
        by_name[comm] = by_name.get(comm, 0.0) + ticks / _CLK_TCK
    return by_name
