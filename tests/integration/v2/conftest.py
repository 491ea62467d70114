"""Fixtures for the tritonclient compatibility tests: a repository and a live `vitserve serve`.

The repository is the coordinator's session fixture `demo_repository` when it exists, else one
exported here with the project's own exporter (the tiny `test` preset: a real ViT graph, ~15 s).
The server is the real CLI started by the tests' one launcher (tests/service_server.py): a free loopback
port, polled until /v2/health/ready answers 200 (with a deadline, never a fixed sleep), SIGTERM afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_server import start_server

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


@pytest.fixture(scope="module")
def v2_server(v2_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = start_server(v2_repository, tmp_path_factory.mktemp("v2_server"), "--providers", "CPUExecutionProvider",
                       "--intra-op-threads", "1", "--warmup", "pow2", ready_timeout=READY_TIMEOUT_S, api_key=None)
    try:
        yield LiveServer(srv.base_url.removeprefix("http://"), v2_repository, srv.log_path)
    finally:
        try:
            srv.stop(timeout=40)
        except subprocess.TimeoutExpired:
            pass  # killed by stop(); this fixture never asserted a clean exit


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
