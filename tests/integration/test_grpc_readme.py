"""The three-line `tritonclient.grpc` example of README.md and service/README.md works as written.

Each README's python block that uses tritonclient.grpc runs as it stands against a real server on the committed
demo models; only the address changes (the server's free port for localhost:8001)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_support import ROOT, build_grpc_repository
from service_server import ServerProcess, start_server


def grpc_example(readme: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if "tritonclient.grpc" in b]
    return str(block)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = build_grpc_repository(tmp_path_factory.mktemp("readme_repo"))
    srv = start_server(repo, tmp_path_factory.mktemp("readme"), "--models", "demo", "--warmup", "one", grpc=True)
    try:
        yield srv
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("readme", ["README.md", "service/README.md"])
def test_the_readme_grpc_example_runs_as_written(server: ServerProcess, readme: str) -> None:
    code = grpc_example(ROOT / readme)
    assert len(code.strip().splitlines()) == 3 and "localhost:8001" in code
    assert server.grpc_target is not None
    result = subprocess.run([sys.executable, "-c", code.replace("localhost:8001", server.grpc_target)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    client = grpcclient.InferenceServerClient(server.grpc_target)
    x = grpcclient.InferInput("pixel_values", [1, 3, 32, 32], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    expected = client.infer("demo", [x]).as_numpy("logits")
    assert expected is not None and expected.shape == (1, 10)
    assert result.stdout.strip() == str(expected)
