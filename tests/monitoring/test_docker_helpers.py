"""docker/runtime_requirements.py (which ONNX Runtime an image gets) and docker/healthcheck.py (the
container's HEALTHCHECK), tested as the image uses them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from monitoring_support import DOCKER_DIR, ROOT

from bench.procs import free_port


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"vitserve_docker_{name}", DOCKER_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = _load("runtime_requirements")
healthcheck = _load("healthcheck")


def _names(lines: list[str]) -> set[str]:
    return {line.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for line in lines}


def test_cpu_image_gets_onnxruntime_and_gpu_image_onnxruntime_gpu() -> None:
    cpu = requirements.runtime_requirements(ROOT / "pyproject.toml", "cpu")
    gpu = requirements.runtime_requirements(ROOT / "pyproject.toml", "gpu")
    assert "onnxruntime" in _names(cpu) and "onnxruntime-gpu" not in _names(cpu)
    assert "onnxruntime-gpu" in _names(gpu) and "onnxruntime" not in _names(gpu)
    assert not any(";" in line for line in cpu + gpu), "markers must be resolved for the image"
    assert _names(cpu) - {"onnxruntime", "openvino"} == _names(gpu) - {"onnxruntime-gpu", "nvidia-ml-py"}
    assert "nvidia-ml-py" in _names(gpu), "the GPU image exports nv_gpu_* metrics"
    assert "openvino" in _names(cpu) and "openvino" not in _names(gpu), "the CPU image serves OpenVINO models"


def test_requirements_follow_pyproject_and_never_pull_torch() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    cpu = requirements.runtime_requirements(ROOT / "pyproject.toml", "cpu")
    expected = _names([d.split(";")[0] for d in declared]) - {"onnxruntime-gpu"} | {"onnxruntime", "openvino"} | {
        "grpcio", "grpcio-health-checking", "tritonclient"}  # the grpc extra: both images serve gRPC
    assert _names(cpu) == expected
    assert not {"torch", "onnx", "timm"} & _names(cpu)


def test_unknown_flavour_and_missing_onnxruntime_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flavour"):
        requirements.runtime_requirements(ROOT / "pyproject.toml", "rocm")
    bare = tmp_path / "pyproject.toml"
    bare.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1"]\n')
    with pytest.raises(ValueError, match="onnxruntime"):
        requirements.runtime_requirements(bare, "cpu")


def test_runtime_requirements_cli_prints_one_requirement_per_line() -> None:
    result = subprocess.run([sys.executable, str(DOCKER_DIR / "runtime_requirements.py"), "--flavour", "cpu"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == requirements.runtime_requirements(ROOT / "pyproject.toml", "cpu")


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def health_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield str(server.server_address[1]), handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_is_healthy_only_on_200(health_server: tuple[str, type[_Handler]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    port, handler = health_server
    monkeypatch.setenv("VITSERVE_PORT", port)
    assert healthcheck.main([]) == 0
    handler.status = 503
    assert healthcheck.main([]) == 1


def test_healthcheck_grpc_needs_grpc_health_serving_too(health_server: tuple[str, type[_Handler]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    port, _ = health_server
    monkeypatch.setenv("VITSERVE_PORT", port)
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("VITSERVE_GRPC_PORT", str(grpc_port))
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.main(["--grpc"]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main(["--grpc"]) == 0
    finally:
        server.stop(None)
    assert healthcheck.main(["--grpc", "--timeout", "1"]) == 1  # nothing listens on the gRPC port


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert healthcheck.main(["--url", f"http://127.0.0.1:{free_port()}/v2/health/ready", "--timeout", "1"]) == 1


def test_healthcheck_script_runs_without_the_project(health_server: tuple[str, type[_Handler]]) -> None:
    """The image runs it as a plain script with only the stdlib."""
    port, _ = health_server
    result = subprocess.run([sys.executable, "-I", str(DOCKER_DIR / "healthcheck.py")], capture_output=True,
                            text=True, env={"VITSERVE_PORT": port}, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 200" in result.stdout


# --- docker/build_local.sh: prerequisites are checked first, with one message -----------------------------

BUILD_LOCAL = DOCKER_DIR / "build_local.sh"


def _build_local_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`build_local.sh --check`: the same checks a real run makes first, changing nothing."""
    return subprocess.run(["bash", str(BUILD_LOCAL), "--check"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env})


def _fake_python(tmp_path: Path, version: str) -> Path:
    fake = tmp_path / f"python{version}"
    fake.write_text(f"#!/bin/sh\n# a Python {version} stand-in\n"
                    f"case \"$*\" in *version_info*) exit 1 ;; *) echo {version} ;; esac\n")
    fake.chmod(0o755)
    return fake


def test_build_local_check_passes_here_or_names_what_is_missing(tmp_path: Path) -> None:
    result = _build_local_check(tmp_path, PYTHON=sys.executable)
    if os.geteuid() == 0:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "prerequisites OK" in result.stdout
    else:
        assert result.returncode == 1 and "run as root" in result.stdout


def test_build_local_stops_before_any_work_on_an_old_python(tmp_path: Path) -> None:
    result = _build_local_check(tmp_path, PYTHON=str(_fake_python(tmp_path, "3.10.12")))
    assert result.returncode == 1
    assert "prerequisites missing, nothing was done" in result.stdout
    assert "Python >= 3.11 is needed" in result.stdout and "3.10.12" in result.stdout


def test_build_local_without_repository_or_exporter_says_make_setup(tmp_path: Path) -> None:
    result = _build_local_check(tmp_path, PYTHON=sys.executable, REPOSITORY=str(tmp_path / "none"),
                                VENV=str(tmp_path / "no-venv"))
    assert result.returncode == 1
    if not (ROOT / "docker" / ".build" / "models").is_dir():
        assert "run make setup first" in result.stdout, result.stdout


def test_build_local_all_problems_in_one_message(tmp_path: Path) -> None:
    """Several problems at once are listed together, not discovered one run at a time."""
    result = _build_local_check(tmp_path, PYTHON=str(tmp_path / "absent-python"), TARGET="cpu",
                                REPOSITORY=str(tmp_path / "none"), VENV=str(tmp_path / "no-venv"))
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.split("] ", 1)[-1].startswith("  - ")]
    assert any("absent-python" in line for line in lines)
    if not (ROOT / "docker" / ".build" / "models").is_dir():
        assert len(lines) >= 2, result.stdout
