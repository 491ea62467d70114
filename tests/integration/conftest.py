"""Integration fixtures: the tiny model repository and a real `vitserve serve` on a loopback port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_server import INTEGRATION_MODELS, ServerProcess, start_server  # noqa: E402  (after the sys.path setup)
from tiny_repository import build_tiny_repository  # noqa: E402  (after the sys.path setup)


@pytest.fixture(scope="session")
def service_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny ONNX models built with onnx.helper: working, heavy (for batching) and broken ones."""
    return build_tiny_repository(tmp_path_factory.mktemp("service_repo"), INTEGRATION_MODELS)


@pytest.fixture(scope="module")
def server(service_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(service_repository, tmp_path_factory.mktemp("server"), "--warmup", "pow2")
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code}:\n{srv.log()[-3000:]}"
