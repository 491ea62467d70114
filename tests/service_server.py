"""The tests' one launcher of a real `vitserve serve`: a free loopback port, ready by polling, stopped by PID.

Test support, not production code: `tests/` is on sys.path (pytest's rootdir conftest), so every suite imports
it as `from service_server import start_server`. The free port comes from the bench's `free_port` (one helper).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import free_port

API_KEY = "integration-key-0123"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    #: host:port of its gRPC endpoint (started with `grpc=True`), else None
    grpc_target: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code (the graceful path)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def start_server(repository: Path, tmp: Path, *args: str, ready_timeout: float = 60.0,
                 env: dict[str, str] | None = None, ready_path: str = "/v2/health/ready",
                 api_key: str | None = API_KEY, grpc: bool = False) -> ServerProcess:
    """Start `python -m service.cli serve` and poll `ready_path` until 200 (deadline, no fixed sleep).

    `api_key=None` starts it without a repository-control key (load/unload disabled, as by default). `grpc`: serve
    gRPC too, on another free port (`grpc_target`); otherwise the server serves none (tests/conftest.py)."""
    last_error: str = ""
    for _ in range(3):  # a free port can be taken between probe and bind: retry with another
        port = free_port()
        grpc_port = free_port() if grpc else 0
        log_path = tmp / f"server-{port}.log"
        cmd = [sys.executable, "-m", "service.cli", "serve", "--repository", str(repository),
               "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port), *args]
        full_env = {**os.environ, **({"VITSERVE_API_KEY": api_key} if api_key else {}), **(env or {})}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path,
                               f"127.0.0.1:{grpc_port}" if grpc else None)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(server.base_url + ready_path, timeout=1.0).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        last_error = server.log()[-3000:]
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if "address already in use" not in last_error.lower() and "cannot bind the grpc port" not in last_error.lower():
            break
    raise RuntimeError(f"server did not become ready:\n{last_error}")


def children(server: ServerProcess) -> dict[str, int]:
    """comm -> pid of the supervisor's children."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == server.proc.pid:
            out[comm] = int(entry.name)
    return out


def front_ends(server: ServerProcess, count: int = 2, timeout: float = 30.0) -> list[int]:
    """The pids of front ends 0..count-1 (waiting for them, e.g. for a replacement, to exist and serve)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(server)
        pids = [found.get(f"vitserve-fe{i}") for i in range(count)]
        if all(pids):
            return [p for p in pids if p]
        time.sleep(0.05)
    raise AssertionError(f"front ends not found: {children(server)}")
