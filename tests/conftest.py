"""Session-wide fixtures shared by every suite.

Model repositories are built once per test session (export is the slow part) and handed out
read-only; a test that changes a repository takes `demo_repository_copy`. The vanilla `demo` model is
trained on the digits at most once per session too (`trained_demo`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where used: tests/monitoring/test_skip_summary.py runs this file alone
    from repository_builder import TrainedDemo

# Servers the tests start (in process or as `vitserve serve`) serve no gRPC unless a test asks for a port
# (tests/service_server.py `start_server(..., grpc=True)`): the default, 8001, would be one port for all of them.
os.environ.setdefault("VITSERVE_GRPC_PORT", "0")

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_DEMO = ROOT / "models" / "demo"


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly exported repository of seeded `demo` models (vanilla, cb, gab, reattn).

    Built through the real export pipeline (fold, ONNX export, parity, FLOPs, writer), so every
    suite that serves it also exercises the contract between export/ and service/.
    """
    from repository_builder import build_test_repository

    return build_test_repository(tmp_path_factory.mktemp("demo_repository"))


@pytest.fixture
def demo_repository_copy(demo_repository: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `demo_repository` for tests that corrupt or add versions."""
    dst = tmp_path / "repository"
    shutil.copytree(demo_repository, dst)
    return dst


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory) -> TrainedDemo:
    """The vanilla `demo` trained once per session and shared read-only: the demo training test checks its accuracy
    and manifest, the fine-tuning test starts every variant from its weights (both in
    tests/integration/test_finetune_digits.py, so one worker of `make test` trains it)."""
    pytest.importorskip("torch")
    from repository_builder import TrainedDemo

    from export.train import train_demo_repository  # lazy: suites without torch use this conftest too

    root = tmp_path_factory.mktemp("trained_demo")
    weights_dir = root / "weights"
    # the default recipe (DEMO_CONFIG, the default per-spec epochs: DEMO_CONFIG.epochs for the vanilla model)
    results = train_demo_repository(root / "repository", ["demo"], progress=False, weights_dir=weights_dir)
    return TrainedDemo(root / "repository", weights_dir / "demo.pth", results)


#: skip reasons of tests that need something `make test` does not install, and the command that adds it
_MISSING = (
    (re.compile(r"^(\S+) not found \(docker/ci_checks\.sh installs it\)"), "make tools"),
    (re.compile(r"^no (vitserve:\w+ image|docker engine)"), "sudo bash docker/build_local.sh"),
)


def _skipped_for_missing(terminalreporter: pytest.TerminalReporter) -> dict[str, tuple[int, set[str]]]:
    """command -> (number of tests skipped, what they lacked), from the skip reasons."""
    found: dict[str, tuple[int, set[str]]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        for pattern, command in _MISSING:
            match = pattern.match(reason)
            if match:
                count, what = found.get(command, (0, set()))
                found[command] = (count + 1, what | {match.group(1)})
    return found


def _figures(terminalreporter: pytest.TerminalReporter) -> dict[str, str]:
    """name -> JSON: the figures tests recorded (tests/reliability/reliability_support.py `FIGURES`), from the reports'
    user properties named `figure:...`, which reach this process from every worker."""
    figures: dict[str, str] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if isinstance(name, str) and name.startswith("figure:"):
                    figures[name.removeprefix("figure:")] = str(value)
    return figures


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None, None, None]:
    """After pytest's own summary sections: the reliability suite's figures, then one line when tests were skipped
    for a missing tool.

    Why: `make test` installs Python packages only; promtool, prometheus, docker-compose (and an image)
    come from elsewhere, and a green run with silent skips is not CI's green run. pytest's closing
    `N passed, N skipped` line still comes last (CI reads it).
    """
    yield
    figures = _figures(terminalreporter)
    if figures:
        terminalreporter.section("vitserve reliability figures")
        for name in sorted(figures):
            terminalreporter.write_line(f"{name}: {figures[name]}")
    found = _skipped_for_missing(terminalreporter)
    if found:
        parts = [f"{count} need {', '.join(sorted(what))} -> {command}" for command, (count, what) in found.items()]
        terminalreporter.write_line("SKIPPED FOR MISSING TOOLS: " + "; ".join(parts), yellow=True, bold=True)
