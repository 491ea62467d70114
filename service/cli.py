"""`vitserve serve --repository DIR [...]`: build Settings from flags + VITSERVE_* env (a runtime's own flags, such as
--intra-op-threads, come from its options class and land in `Settings.runtime_options`), then serve them: one
process (service/server.py) or, with `--http-workers N`, a supervisor of an engine and N front ends
(service/workers/supervisor.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from service.runtimes.table import check_runtime_options, runtime_options_types
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
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = no gRPC endpoint)")
    for options in runtime_options_types():  # each runtime's own flags (ONNX Runtime: providers, threads)
        for name, flag in options.cli_flags.items():
            serve.add_argument("--" + name.replace("_", "-"), **flag)
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
    """Flags given on the command line win over VITSERVE_* environment variables; every runtime's options are
    read once here, so a bad value fails at start."""
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "command" and v is not None
    }
    runtime_fields = {name for options in runtime_options_types() for name in options.cli_flags}
    runtime = {k: overrides.pop(k) for k in list(overrides) if k in runtime_fields}
    settings = Settings(**overrides)
    if runtime:
        settings = settings.model_copy(update={"runtime_options": {**settings.runtime_options, **runtime}})
    check_runtime_options(settings.runtime_options)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:  # pydantic's ValidationError, or a runtime option no runtime knows
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
