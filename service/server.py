"""The one uvicorn server both modes run: `vitserve serve` (one process) and each `--http-workers` front end.

`serve(settings, app)` builds the uvicorn configuration (vitserve's HTTP protocol with the settings'
bounds and the app's direct routes, the graceful-shutdown window, no access log, no `Server` banner) and runs a
`DrainingServer`.

SIGTERM/SIGINT: readiness turns false at once and intake stops (new requests get 503 + Connection: close);
accepted requests drain (up to the drain timeout) while the socket stays open for at least the shutdown
delay; then uvicorn closes the socket and the idle connections, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, cast

import uvicorn

from service.http_protocol import GuardedHttpToolsProtocol, guarded_protocol
from service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.workers.accept import BalancedAcceptor, ConnectionShares

log = logging.getLogger("vitserve.server")


class DrainingServer(uvicorn.Server):
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

    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_delay_s: float,
                 shares: ConnectionShares | None = None) -> None:
        super().__init__(config)
        self.app = app
        self.shutdown_delay_s = shutdown_delay_s
        self.shares = shares
        self.signalled_at: float | None = None
        self.acceptor: BalancedAcceptor | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.shares is None or not sockets:
            await super().startup(sockets)
            return
        from service.workers.accept import BalancedAcceptor

        await super().startup([])  # no uvicorn listener: the acceptor hands it the connections
        if not self.started:
            return
        config, state, lifespan = self.config, self.server_state, self.lifespan
        protocol_class = cast("type[GuardedHttpToolsProtocol]", config.http_protocol_class)  # what `serve` set
        acceptor: BalancedAcceptor

        def protocol() -> GuardedHttpToolsProtocol:  # what uvicorn's own listener builds per connection
            connection = protocol_class(config=config, server_state=state, app_state=lifespan.state)
            connection.watch_disconnect(acceptor.closed)  # the count the siblings read drops at once
            return connection

        acceptor = self.acceptor = BalancedAcceptor(sockets[0], protocol, self.shares,
                                                    lambda: len(state.connections))
        acceptor.start()

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
        self.app.state.store.begin_drain()
        # each answer still to come says `connection: close` and its connection closes after it: a client must
        # not reuse a connection the server is about to close (its next request would meet a reset)
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM:
            while signal.SIGTERM in captured:
                captured.remove(signal.SIGTERM)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.signalled_at is not None and not self.force_exit:
            await self.app.state.store.drained()
            await asyncio.sleep(max(0.0, self.signalled_at + self.shutdown_delay_s - time.monotonic()))
            log.info("drained; closing the listening socket")
        if self.acceptor is not None:
            self.acceptor.close()
            await self.acceptor.connections_made()  # so uvicorn's shutdown reaches each of them
        await super().shutdown(sockets)


def serve(settings: Settings, app: FastAPI, *, sock: socket.socket | None = None,
          shares: ConnectionShares | None = None) -> None:
    """Run `app` until a signal stops it: on `settings.host`/`port`, or on the inherited listening socket `sock`
    (a front end, taking turns at accepting through `shares`)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # header size, Host, header/body timeouts, the connection cap and the body budget, where the bytes arrive
        http=guarded_protocol(settings, direct=app.state.direct_routes),
        # a little longer than the batchers' drain, so requests failed at the drain timeout still get their 503
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + 2,
        access_log=False,
        server_header=False,
    )
    DrainingServer(config, app, settings.shutdown_delay_s, shares).run(sockets=[sock] if sock is not None else None)
