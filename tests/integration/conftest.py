"""Integration fixtures: the tiny model repository and a real `vitserve serve` on a loopback port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openvino_repository import openvino_available, openvino_repository  # noqa: E402  (after the sys.path setup)
from service_server import ServerProcess, start_server  # noqa: E402  (after the sys.path setup)
from tiny_repository import INTEGRATION_MODELS, build_tiny_repository  # noqa: E402  (after the sys.path setup)


@pytest.fixture(scope="session")
def runtime(request: pytest.FixtureRequest) -> str:
    """Which runtime serves `service_repository`: ONNX Runtime, or OpenVINO (skipped where it is not installed).
    A runtime-level test module runs on both with `pytestmark = pytest.mark.parametrize("runtime", ["onnxruntime",
    "openvino"], indirect=True, scope="module")`; a module without it gets ONNX Runtime."""
    name = str(getattr(request, "param", "onnxruntime"))
    if name == "openvino" and not openvino_available():
        pytest.skip("openvino is not installed (pip install 'vitserve[openvino]'; make setup installs it)")
    return name


@pytest.fixture(scope="session")
def service_repository(tmp_path_factory: pytest.TempPathFactory, runtime: str) -> Path:
    """Tiny ONNX models built with onnx.helper: working, heavy (for batching) and broken ones; with
    `runtime` "openvino", the same models as OpenVINO IRs served by Triton's OpenVINO backend's config."""
    onnx_repo = build_tiny_repository(tmp_path_factory.mktemp("service_repo"), INTEGRATION_MODELS)
    if runtime == "openvino":
        return openvino_repository(onnx_repo, tmp_path_factory.mktemp("service_repo_openvino"))
    return onnx_repo


@pytest.fixture(scope="module")
def server(service_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(service_repository, tmp_path_factory.mktemp("server"), "--warmup", "pow2")
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code}:\n{srv.log()[-3000:]}"
