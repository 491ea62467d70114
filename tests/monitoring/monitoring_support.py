"""Helpers of the monitoring tests (tools, readiness polling, the prometheus process), importable by test modules.

Test modules import from here, not from conftest.py: several conftest modules share that name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
VENV_BIN = Path(sys.executable).parent
#: models the proof test needs at least (several variants side by side)
MIN_MODELS = 2


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of an executable (PATH or this interpreter's venv); skip when absent, fail under CI=true."""
    found = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if found:
        return found
    message = f"{name} not found (docker/ci_checks.sh installs it)"
    if in_ci():
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


def wait_http_ok(url: str, deadline_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; fail early when `proc` died."""
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered 200")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {deadline_s} s ({last})")


def repository_models(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


@contextmanager
def running_process(cmd: list[str], log: Path, ready_url: str, *, what: str, ready_s: float,
                    stop_s: float) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` (output to `log`), wait until `ready_url` answers 200, and stop it afterwards
    (SIGTERM, then kill after `stop_s`); a process that never becomes ready fails the test with its log."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http_ok(ready_url, ready_s, proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{what} did not become ready: {exc}\n{log.read_text()[-3000:]}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
