"""Fixtures for service unit tests: a tiny ONNX model repository (see tests/integration/tiny_repository.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))

from tiny_repository import DEFAULT_MODELS, build_tiny_repository  # noqa: E402  (after the sys.path setup)


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with two working models (tiny_a; tiny_b with versions 1 and 2) and two broken ones."""
    return build_tiny_repository(tmp_path_factory.mktemp("tiny_repo"), DEFAULT_MODELS)
