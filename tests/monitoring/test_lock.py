"""The lock (requirements/*.txt, `make lock`): it satisfies pyproject.toml, the images' locks agree with
the full one and hold no torch, `make` and the image install from it, and a built image holds exactly it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from monitoring_support import DOCKER_DIR, ROOT
from packaging.markers import Marker
from packaging.requirements import Requirement

REQUIREMENTS = ROOT / "requirements"
FULL = REQUIREMENTS / "full.txt"
#: the platform the lock is compiled for (Makefile: --python-version 3.11 --python-platform x86_64-manylinux_2_28)
LOCK_ENVIRONMENT = {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux",
                    "os_name": "posix", "python_version": "3.11", "python_full_version": "3.11.7",
                    "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"vitserve_docker_{name}", DOCKER_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lockcheck = _load("freeze_matches_lock")
runtime = _load("runtime_requirements")


def _pins(path: Path) -> dict[str, str]:
    return lockcheck.pins(path.read_text())


def _unmet(requirements: list[str], pins: dict[str, str], extra: str = "") -> list[str]:
    """Requirements (markers evaluated for the lock's platform) that the pins do not satisfy."""
    unmet = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker and not Marker(str(requirement.marker)).evaluate({**LOCK_ENVIRONMENT, "extra": extra}):
            continue
        version = pins.get(lockcheck.normalise(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{line} (locked: {version})")
    return unmet


def test_full_lock_satisfies_every_dependency_of_pyproject() -> None:
    """A dependency added to pyproject.toml without `make lock` fails here, not in someone's install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(FULL)
    unmet = _unmet(project["dependencies"], pins)
    for extra, requirements in project["optional-dependencies"].items():   # `make lock` locks every extra
        unmet += _unmet(requirements, pins, extra)
    assert not unmet, f"requirements/ is stale, run `make lock`: {unmet}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1", "the export versions are fixed"


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_image_lock_resolves_the_image_requirements_without_torch(flavour: str) -> None:
    """What docker/runtime_requirements.py asks for (the image's requirement list), the image lock pins."""
    lock = _pins(REQUIREMENTS / f"service-{flavour}.txt")
    wanted = runtime.runtime_requirements(ROOT / "pyproject.toml", flavour)
    assert not _unmet(wanted, lock), "requirements/ is stale, run `make lock`"
    assert not {"torch", "torchvision", "onnx", "timm", "onnxscript"} & lock.keys()
    full = _pins(FULL)
    ort = full["onnxruntime-gpu"]
    assert lock["onnxruntime-gpu" if flavour == "gpu" else "onnxruntime"] == ort
    assert ("onnxruntime" in lock) == (flavour == "cpu") and ("onnxruntime-gpu" in lock) == (flavour == "gpu")
    differing = {n: (v, full.get(n)) for n, v in lock.items() if n != "onnxruntime" and full.get(n) != v}
    assert not differing, f"the image and `make setup` would install different releases: {differing}"


def test_make_and_the_image_install_from_the_lock(tmp_path: Path) -> None:
    """`make setup`/`setup-service` (CI's install) constrain pip with the lock; the images install it."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not found")
    for target, extras in (("setup", "'.[export,openvino,grpc,bench,dev]'"), ("setup-service", "'.[grpc]'")):
        plan = subprocess.run([make, "-n", target, f"VENV={tmp_path / target}"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        installs = [line for line in plan.splitlines() if " install " in line and "-e" in line]
        assert installs and all("-c requirements/full.txt" in line for line in installs), plan
        assert installs[-1].endswith(f"-e {extras}"), plan
    installer = (DOCKER_DIR / "install_service.sh").read_text()
    assert '-r "requirements/service-$flavour.txt"' in installer and "--no-deps ." in installer


def test_freeze_comparison_normalises_names_and_reports_every_difference() -> None:
    lock = "# made by make lock\nPillow==13.0.0\npydantic-core==2.50.5\nzope-event==6.2\nnumpy==2.4.6\n"
    freeze = "pillow==13.0.0\npydantic_core==2.50.5\nzope.event==6.2\nnumpy==2.4.6\nvitserve @ file:///src\n"
    assert lockcheck.differences(freeze, lock) == []
    drifted = freeze.replace("numpy==2.4.6", "numpy==2.5.0").replace("zope.event==6.2\n", "") + "extra==1\n"
    assert lockcheck.differences(drifted, lock) == [
        "numpy: installed 2.5.0, locked 2.4.6", "zope-event==6.2: locked, not installed",
        "extra==1: installed, not in the lock"]


def test_freeze_comparison_cli_exit_status(tmp_path: Path) -> None:
    freeze = tmp_path / "freeze.txt"
    freeze.write_text((REQUIREMENTS / "service-cpu.txt").read_text())
    script = str(DOCKER_DIR / "freeze_matches_lock.py")
    ok = subprocess.run(["python3", script, str(REQUIREMENTS / "service-cpu.txt"), str(freeze)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "pins match" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run(["python3", script, str(REQUIREMENTS / "service-gpu.txt"), str(freeze)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "onnxruntime-gpu==" in bad.stdout


def _docker() -> str:
    docker = os.environ.get("DOCKER") or shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no docker engine (sudo bash docker/build_local.sh starts one and builds the image)")
    return docker


@pytest.mark.parametrize("flavour", ["cpu"])
def test_built_image_pip_freeze_matches_the_lock(flavour: str) -> None:
    """The image docker/build_local.sh (or `docker build --target cpu`) built holds exactly the lock."""
    docker = _docker()
    image = f"vitserve:{flavour}"
    if subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.skip(f"no {image} image (sudo bash docker/build_local.sh builds it)")
    freeze = subprocess.run([docker, "run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/pip", image,
                             "freeze", "--no-cache-dir", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    assert "vitserve" in freeze
    assert lockcheck.differences(freeze, (REQUIREMENTS / f"service-{flavour}.txt").read_text()) == []
