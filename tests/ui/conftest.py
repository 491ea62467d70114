"""Fixtures of the /ui tests: a real `vitserve serve --http-workers 2` on committed demo models, and headless Chromium.

Chromium and its driver are Debian's (`apt-get install chromium chromium-driver`; docker/ci_checks.sh installs them):
absent on a developer machine the tests skip and say so, under CI=true they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # the test helper's home: tests/ (tests is on sys.path), formerly tests/integration/
    from service_server import ServerProcess, start_server
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from service_server import ServerProcess, start_server

from ui_support import BROKEN, CHROMIUM_FLAGS, COMMITTED_DEMO, SERVED  # noqa: E402  (after the fallback import)


def require_tool(*names: str) -> str:
    """The first of `names` on PATH; skip when none is (a failure under CI=true, where ci_checks.sh installs it)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{names[0]} not found (docker/ci_checks.sh installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def ui_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not all((COMMITTED_DEMO / name).is_dir() for name in (*SERVED, BROKEN)):
        pytest.skip(f"the committed demo models ({', '.join(SERVED)}) are not in {COMMITTED_DEMO}")
    repository = tmp_path_factory.mktemp("ui") / "repository"
    for name in (*SERVED, BROKEN):
        shutil.copytree(COMMITTED_DEMO / name, repository / name)
    model = repository / BROKEN / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-64] + b"\0" * 64)
    return repository


@pytest.fixture(scope="module")
def ui_server(ui_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two front ends and the engine: /ui, /v1/models, /v1/compare and /metrics are forwarded to the engine."""
    srv = start_server(ui_repository, tmp_path_factory.mktemp("ui_server"), "--http-workers", "2",
                       "--providers", "CPUExecutionProvider", "--intra-op-threads", "1", "--warmup", "one",
                       ready_timeout=180.0)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code}:\n{srv.log()[-3000:]}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium through chromedriver, a fresh profile, nothing fetched from elsewhere."""
    chromium = require_tool("chromium", "chromium-browser")
    chromedriver = require_tool("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (the dev extra: make setup)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = Service(executable_path=chromedriver, log_output=str(tmp_path_factory.mktemp("chromedriver") / "log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
