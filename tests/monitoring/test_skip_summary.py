"""tests/conftest.py's closing line: a run that skipped tests for a missing tool says so, and which command
adds it, just before pytest's own summary line (which stays last: CI reads it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from monitoring_support import ROOT

SKIPPING = '''
import pytest

def test_needs_promtool():
    pytest.skip("promtool not found (docker/ci_checks.sh installs it)")

def test_needs_compose():
    pytest.skip("docker-compose not found (docker/ci_checks.sh installs it)")

def test_needs_image():
    pytest.skip("no vitserve:cpu image (sudo bash docker/build_local.sh builds it)")

def test_runs():
    assert True
'''


def _run(tmp_path: Path, body: str) -> list[str]:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(body)
    result = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return result.stdout.strip().splitlines()


def test_missing_tools_named_in_one_line_before_the_summary_line(tmp_path: Path) -> None:
    lines = _run(tmp_path, SKIPPING)
    assert "1 passed, 3 skipped" in lines[-1]
    flagged = [line for line in lines if line.startswith("SKIPPED FOR MISSING TOOLS")]
    assert flagged == [lines[-2]], lines[-6:]
    assert "2 need docker-compose, promtool -> make tools" in flagged[0]
    assert "1 need vitserve:cpu image -> sudo bash docker/build_local.sh" in flagged[0]


def test_no_line_when_nothing_was_skipped_for_a_tool(tmp_path: Path) -> None:
    lines = _run(tmp_path, "import pytest\n\ndef test_other():\n    pytest.skip('not on this platform')\n")
    assert "1 skipped" in lines[-1]
    assert not any(line.startswith("SKIPPED FOR MISSING TOOLS") for line in lines)
