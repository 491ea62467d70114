"""Session-wide fixtures shared by every suite.

Model repositories are built once per test session (export is the slow part) and handed out
read-only; a test that changes a repository takes `demo_repository_copy`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_DEMO = ROOT / "models" / "demo"


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly exported repository of seeded `demo` models (vanilla, cb, gab, reattn).

    Built through the real export pipeline (fold, ONNX export, parity, FLOPs, writer), so every
    suite that serves it also exercises the contract between export/ and service/.
    """
    from export.build import build_test_repository

    return build_test_repository(tmp_path_factory.mktemp("demo_repository"))


@pytest.fixture
def demo_repository_copy(demo_repository: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `demo_repository` for tests that corrupt or add versions."""
    dst = tmp_path / "repository"
    shutil.copytree(demo_repository, dst)
    return dst
