"""`vitserve serve --repository DIR [...]`: build Settings from flags + VITSERVE_* env, then serve them: one
process (service/server.py) or, with `--http-workers N`, a supervisor of an engine and N front ends
(service/workers/supervisor.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from service.settings import Settings

log = logging.getLogger("vitserve.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitserve", description="Serve a vitserve/Triton model repository")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--repository", help="model repository directory (env VITSERVE_REPOSITORY)")
    serve.add_argument("--models", nargs="+", help="only these models (default: all)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (default 8000)")
    serve.add_argument("--providers", nargs="+", help="ONNX Runtime execution providers in order of preference")
    serve.add_argument("--intra-op-threads", type=int)
    serve.add_argument("--inter-op-threads", type=int)
    serve.add_argument("--max-batch-size", type=int)
    serve.add_argument("--max-queue-delay-ms", type=float)
    serve.add_argument("--max-queue-size", type=int)
    serve.add_argument("--instances", type=int, help="execution instances per model (0 = config.pbtxt instance_group)")
    serve.add_argument("--default-deadline-ms", type=float)
    serve.add_argument("--max-body-bytes", type=int)
    serve.add_argument("--max-image-bytes", type=int, help="largest decoded image in bytes (413 above)")
    serve.add_argument("--max-header-bytes", type=int, help="largest request line + headers (431 above)")
    serve.add_argument("--header-timeout-s", type=float, help="time to deliver a request's headers (408 after)")
    serve.add_argument("--body-timeout-s", type=float, help="longest pause inside a request body")
    serve.add_argument("--max-connections", type=int, help="open connections at most (503 above)")
    serve.add_argument("--warmup", choices=["auto", "all", "pow2", "one"])
    serve.add_argument("--compute-threads", type=int,
                       help="intra-op threads computing at once across all CPU sessions (0 = CPU cores)")
    serve.add_argument("--load-concurrency", type=int, help="model versions loading at once (0 = CPU cores)")
    serve.add_argument("--drain-timeout-s", type=float)
    serve.add_argument("--shutdown-delay-s", type=float)
    serve.add_argument("--poll-interval-s", type=float)
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--http-workers", type=int,
                       help="front-end processes on one port, one engine process (default 1: one process)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags given on the command line win over VITSERVE_* environment variables."""
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "command" and v is not None
    }
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"vitserve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if settings.http_workers > 1:
        from service.workers.supervisor import serve_workers

        return serve_workers(settings)
    from service import gc_policy
    from service.app import create_app
    from service.server import serve

    app = create_app(settings)
    gc_policy.install(app.state.store, settings.gc_freeze)
    serve(settings, app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
