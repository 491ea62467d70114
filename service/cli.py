"""`vitserve serve --repository DIR [...]`: build Settings from flags + VITSERVE_* env, run uvicorn.

SIGTERM/SIGINT: readiness turns false at once and intake stops (new requests get 503 + Connection: close);
accepted requests drain (up to the drain timeout) while the socket stays open for at least the shutdown
delay; then uvicorn closes the socket and the idle connections, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.settings import Settings

if TYPE_CHECKING:
    from service.workers.accept import ConnectionShares

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


class _DrainingServer:
    """uvicorn.Server whose exit signal first turns readiness off, and whose graceful exit is status 0.

    uvicorn closes its listening socket as soon as it starts shutting down; connections still in the
    kernel's accept queue are then reset, unanswered. Here the socket stays open while the accepted
    requests drain and for at least `shutdown_delay_s`, answering newcomers 503 + Connection: close,
    and only then closes. uvicorn re-raises a captured SIGTERM after its graceful shutdown (the process
    then dies with -15); a drained, orderly shutdown is a success, so SIGTERM is not re-raised. SIGINT
    keeps uvicorn's behaviour (a second Ctrl-C forces exit).

    `shares`: a front end of `--http-workers` accepts on the shared socket through
    service/workers/accept.py (connections spread evenly across the front ends) instead of uvicorn's
    listener; it stops accepting where uvicorn would close its listener.
    """

    @staticmethod
    def make(config: Any, app: Any, shutdown_delay_s: float, shares: ConnectionShares | None = None) -> Any:
        import asyncio
        import signal
        import time

        import uvicorn

        class Server(uvicorn.Server):
            signalled_at: float | None = None
            acceptor: Any = None

            async def startup(self, sockets: Any = None) -> None:
                if shares is None or not sockets:
                    await super().startup(sockets)
                    return
                from service.workers.accept import BalancedAcceptor

                await super().startup([])  # no uvicorn listener: the acceptor hands it the connections
                if not self.started:
                    return
                state, lifespan = self.server_state, self.lifespan
                acceptor: Any = None

                class Protocol(config.http_protocol_class):
                    def connection_lost(self, exc: Exception | None) -> None:
                        super().connection_lost(exc)
                        acceptor.closed()  # the count the siblings read drops at once

                def protocol() -> Any:  # what uvicorn's own listener builds per connection
                    return Protocol(config=config, server_state=state, app_state=lifespan.state)

                acceptor = self.acceptor = BalancedAcceptor(sockets[0], protocol, shares,
                                                            lambda: len(state.connections))
                acceptor.start()

            def handle_exit(self, sig: int, frame: Any) -> None:
                if self.signalled_at is None:
                    self.signalled_at = time.monotonic()
                app.state.store.begin_drain()
                # each answer still to come says `connection: close` and its connection closes after it: a
                # client must not reuse a connection the server is about to close (its next request would
                # meet a reset)
                for connection in list(self.server_state.connections):
                    cycle = getattr(connection, "cycle", None)
                    if cycle is not None and not cycle.response_complete:
                        cycle.keep_alive = False
                super().handle_exit(sig, frame)
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list) and sig == signal.SIGTERM:
                    while signal.SIGTERM in captured:
                        captured.remove(signal.SIGTERM)

            async def shutdown(self, sockets: Any = None) -> None:
                if self.signalled_at is not None and not self.force_exit:
                    await app.state.store.drained()
                    await asyncio.sleep(max(0.0, self.signalled_at + shutdown_delay_s - time.monotonic()))
                    log.info("drained; closing the listening socket")
                if self.acceptor is not None:
                    self.acceptor.close()
                    await self.acceptor.connections_made()  # so uvicorn's shutdown reaches each of them
                await super().shutdown(sockets)

        return Server(config)


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
    import uvicorn

    from service import gc_policy
    from service.app import create_app
    from service.http_protocol import guarded_protocol

    app = create_app(settings)
    gc_policy.install(app.state.store, settings.gc_freeze)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # header size, header/body timeouts and the connection cap, where the bytes arrive
        http=guarded_protocol(settings, direct=app.state.direct_routes),
        # a little longer than the batchers' drain, so requests failed at the drain timeout still get their 503
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + 2,
        access_log=False,
        server_header=False,
    )
    server = _DrainingServer.make(config, app, settings.shutdown_delay_s)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
