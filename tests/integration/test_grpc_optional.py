"""Without the `grpc` extra the server starts, serves REST, and says once that gRPC is off and how to turn it on."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from grpc_support import build_grpc_repository
from service_server import start_server


def test_a_server_without_grpcio_serves_rest_and_logs_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "no_grpc"
    (blocked / "grpc").mkdir(parents=True)
    (blocked / "grpc" / "__init__.py").write_text("raise ImportError(\"No module named 'grpc'\", name='grpc')\n")
    repo = build_grpc_repository(tmp_path / "repo")
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH", "")) if p)
    srv = start_server(repo, tmp_path, "--models", "demo", "--warmup", "one", grpc=True, env={"PYTHONPATH": path})
    try:
        assert httpx.get(srv.base_url + "/v2/models/demo/ready").status_code == 200
        lines = [line for line in srv.log().splitlines() if "grpc" in line.lower()]
        assert len(lines) == 1, lines
        assert "gRPC is off" in lines[0] and "pip install 'vitserve[grpc]'" in lines[0]
    finally:
        assert srv.stop() == 0
