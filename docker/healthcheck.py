#!/usr/bin/env python3
"""Container health check: exit 0 when vitserve answers /v2/health/ready with 200, else 1.

Why a script: the runtime image carries no curl or wget, only Python; Docker's HEALTHCHECK and any
orchestrator without HTTP probes can run this. Stdlib only, but for `--grpc`: then grpc.health.v1 on
127.0.0.1:$VITSERVE_GRPC_PORT (default 8001) must answer SERVING too (grpcio and grpcio-health-checking, the
`grpc` extra the images install). Port from VITSERVE_PORT (default 8000).

    vitserve-healthcheck [--url http://127.0.0.1:8000/v2/health/ready] [--timeout 3] [--grpc]
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def default_url() -> str:
    port = os.environ.get("VITSERVE_PORT", "8000")
    return f"http://127.0.0.1:{port}/v2/health/ready"


def check(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, why): healthy only for an HTTP 200 within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {exc}"


def check_grpc(target: str, timeout: float) -> tuple[bool, str]:
    """(healthy, why): healthy only for grpc.health.v1 SERVING (the overall service) within `timeout` seconds."""
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:
        return False, f"grpc is not installed ({exc.name})"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"gRPC {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="readiness URL (default: 127.0.0.1:$VITSERVE_PORT)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--grpc", action="store_true", help="also grpc.health.v1 on 127.0.0.1:$VITSERVE_GRPC_PORT")
    args = parser.parse_args(argv)
    url = args.url or default_url()
    healthy, why = check(url, args.timeout)
    print(f"{url}: {why}")
    if args.grpc and healthy:
        target = f"127.0.0.1:{os.environ.get('VITSERVE_GRPC_PORT', '8001')}"
        healthy, why = check_grpc(target, args.timeout)
        print(f"grpc {target}: {why}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
