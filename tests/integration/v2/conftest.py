"""Fixtures for the tritonclient compatibility tests: a repository and a live `vitserve serve`.

The repository is the coordinator's session fixture `demo_repository` when it exists, else one
exported here with the project's own exporter (the tiny `test` preset: a real ViT graph, ~15 s).
The server is the real CLI in a subprocess on a free loopback port, polled until /v2/health/ready
answers 200 (with a deadline, never a fixed sleep), and stopped with SIGTERM afterwards.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.manifest import MODEL_FILENAME, Manifest
from service.model_config import ModelConfig

READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    config: ModelConfig
    manifest: Manifest
    onnx_path: Path


@dataclass(frozen=True)
class LiveServer:
    url: str  # host:port, as tritonclient wants it
    repository: Path
    log: Path


@pytest.fixture(scope="session")
def v2_repository(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return Path(request.getfixturevalue("demo_repository"))
    except pytest.FixtureLookupError:
        pass
    from repository_builder import build_test_repository

    return build_test_repository(tmp_path_factory.mktemp("v2") / "repository", ["test"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready after {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def v2_server(v2_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = _free_port()
    log = tmp_path_factory.mktemp("v2_server") / "vitserve.log"
    exe = shutil.which("vitserve", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "service.cli"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*cmd, "serve", "--repository", str(v2_repository), "--host", "127.0.0.1", "--port", str(port),
             "--providers", "CPUExecutionProvider", "--intra-op-threads", "1", "--warmup", "pow2"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    url = f"127.0.0.1:{port}"
    try:
        try:
            _wait_ready(url, proc, READY_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"vitserve did not become ready: {exc}\n{log.read_text(errors='replace')[-3000:]}")
        yield LiveServer(url, v2_repository, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served_model(v2_server: LiveServer) -> ServedModel:
    """The first model of the repository that the server reports ready, at its highest version."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(v2_server.url)
    try:
        for directory in sorted(p for p in v2_server.repository.iterdir() if (p / "config.pbtxt").is_file()):
            if client.is_model_ready(directory.name):
                versions = sorted(int(v.name) for v in directory.iterdir() if (v / MODEL_FILENAME).is_file())
                config = ModelConfig.load(directory / "config.pbtxt")
                version = versions[-1]
                return ServedModel(directory.name, version, config, Manifest.load(directory),
                                   directory / str(version) / MODEL_FILENAME)
    finally:
        client.close()
    pytest.fail(f"no model of {v2_server.repository} is ready")
