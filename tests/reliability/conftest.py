"""Fixtures of the reliability suite: a repository of tiny models (working, slow, batch-1-only) and a server.

Servers are real `vitserve serve` processes on loopback ports (tests/service_server.py);
each test module that needs special settings starts its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import (
    BATCH_ONE,
    FIGURE_PREFIX,
    FIGURES,
    SLOW,
    ServerProcess,
    TinyModel,
    batch_one_only_onnx,
    build_tiny_repository,
    slow_conv_onnx,
    start_server,
    stopped_cleanly,
    write_custom_model,
)


@pytest.fixture(scope="session")
def reliability_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_a (fast, 32 px), tiny_slow (conv stack, ~20 ms per image), tiny_batch1 (fails for batch > 1)."""
    root = build_tiny_repository(tmp_path_factory.mktemp("reliability_repo"), [TinyModel("tiny_a")])
    write_custom_model(root, SLOW, slow_conv_onnx)
    write_custom_model(root, BATCH_ONE, batch_one_only_onnx)
    return root


@pytest.fixture(scope="module")
def hostile_server(reliability_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on tiny_a only, for the attack tests; it must still exit 0 and log no unhandled error."""
    srv = start_server(reliability_repository, tmp_path_factory.mktemp("hostile"), "--models", "tiny_a",
                       "--warmup", "one")
    with stopped_cleanly(srv):
        yield srv


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item) -> None:
    """The figures a test recorded travel in its report (as JSON), so the run's closing summary prints them: with
    `make test`'s workers the summary is written by another process (tests/conftest.py)."""
    item.user_properties.extend((FIGURE_PREFIX + k, json.dumps(v, default=_plain)) for k, v in FIGURES.items())
    FIGURES.clear()


def _plain(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars
    return item() if callable(item) else str(value)
