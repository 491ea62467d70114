"""Fixtures for the monitoring and deployment tests: a demo repository and a live vitserve.

Tools (promtool, prometheus, hadolint, docker-compose, kubernetes-validate, kubectl) are real binaries;
see monitoring_support.require_tool: skipped when absent on a developer machine, a failure under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from monitoring_support import MIN_MODELS, ROOT, repository_models, require_tool
from service_server import start_server

#: trained models of the committed demo repository served by the monitoring tests: vanilla and a variant of each
#: folding kind, each with a held-out evaluation (so the accuracy panel has data, as it would in production)
MONITORED_MODELS = ("demo", "demo-cb", "demo-gab", "demo-reattn")


@pytest.fixture(scope="session")
def monitoring_repository(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with at least two demo variants, every one evaluated.

    VITSERVE_MONITORING_REPOSITORY when set (a local shortcut), else four trained models copied from the
    committed models/demo, else the coordinator's session fixture `demo_repository` when it exists (random
    weights: the accuracy panel stays empty), else one built here with the exporter's CLI.
    """
    override = os.environ.get("VITSERVE_MONITORING_REPOSITORY")
    if override:
        return Path(override)
    committed = ROOT / "models" / "demo"
    if all((committed / name).is_dir() for name in MONITORED_MODELS):
        repository = tmp_path_factory.mktemp("monitoring") / "repository"
        for name in MONITORED_MODELS:
            shutil.copytree(committed / name, repository / name)
        return repository
    try:
        repository = Path(request.getfixturevalue("demo_repository"))
        if len(repository_models(repository)) >= MIN_MODELS:
            return repository
    except pytest.FixtureLookupError:
        pass
    exporter = require_tool("vitserve-export")
    repository = tmp_path_factory.mktemp("monitoring") / "repository"
    subprocess.run([exporter, "build", "--repository", str(repository), "demo", "demo+cb"], check=True,
                   timeout=900)
    return repository


@dataclass(frozen=True)
class LiveService:
    base_url: str
    models: list[str]
    log: Path


@pytest.fixture(scope="module")
def live_service(monitoring_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """`vitserve serve` on a free loopback port, ready (the tests' one launcher); SIGTERM, then kill, afterwards."""
    srv = start_server(monitoring_repository, tmp_path_factory.mktemp("vitserve"), "--providers",
                       "CPUExecutionProvider", "--intra-op-threads", "1", "--warmup", "pow2", ready_timeout=180.0,
                       api_key=None)
    try:
        yield LiveService(srv.base_url, repository_models(monitoring_repository), srv.log_path)
    finally:
        try:
            srv.stop(timeout=40)
        except subprocess.TimeoutExpired:
            pass  # killed by stop(); this fixture never asserted a clean exit
