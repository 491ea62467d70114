"""Front ends take turns at accepting, so connections spread evenly across the processes on one port.

Every front end accepts on the same listening socket. Left to the event loop, the process that wakes
first takes every connection waiting (libuv accepts until the queue is empty), so a burst of new
keep-alive connections (a load balancer's pool opening, a benchmark's clients) can land almost all
on one front end, which then does all the work while the others idle. Here a front end accepts, at
each readiness, only while it holds no more connections than the least-loaded live sibling plus a
slack (`SLACK`, or an eighth of the sibling's count when that is more: a few percent of imbalance
costs nothing, and a loaded front end then takes a burst in a few turns of its event loop, not one
connection per turn). A front end past that point leaves the next connection to the siblings for up
to `defer_s`; if nobody has taken it by then it takes it, so a sibling that is busy, stopped or stuck
delays a connection by at most `defer_s` and never strands it. The counts live in a small array every front end maps
(`ConnectionShares`, made by the supervisor); a front end that is not accepting (not yet serving,
shut down, dead) holds -1 there and is not waited for.

Not SO_REUSEPORT (a listening socket per front end): the kernel's hash spreads connections no more
evenly than this, and a stopped, stuck or restarting front end would strand the connections hashed
to its socket, where here its siblings take them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, MutableSequence

log = logging.getLogger("vitserve.frontend")

#: connections a front end may hold above the least-loaded sibling before it defers to the siblings (at least)
SLACK = 2
#: ... or this fraction of the sibling's count, when that is more (1/8: an imbalance of a few percent)
SLACK_FRACTION = 8
#: connections taken in one readiness at most, however many wait (other work of the loop goes on between)
ACCEPTS_PER_READINESS = 64
#: how long a new connection is left to a less-loaded sibling before this front end takes it anyway
DEFER_S = 0.002
#: the pause after the process ran out of descriptors or memory for a new connection (as asyncio's)
RESOURCE_PAUSE_S = 1.0
NOT_ACCEPTING = -1


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
        return f"{host}:{port}"
    except (OSError, TypeError):
        return "the shared socket"


def should_defer(mine: int, least_other: int | None, slack: int = SLACK) -> bool:
    """Whether a front end holding `mine` connections leaves the next one to a sibling holding `least_other`
    (its slack: `slack` or `least_other // SLACK_FRACTION`, whichever is more)."""
    return least_other is not None and mine > least_other + max(slack, least_other // SLACK_FRACTION)


class ConnectionShares:
    """Each front end's connection count in memory shared by the processes (`NOT_ACCEPTING`: not serving)."""

    def __init__(self, slots: MutableSequence[int], index: int) -> None:
        self.slots = slots
        self.index = index

    def publish(self, count: int) -> None:
        self.slots[self.index] = count

    def withdraw(self) -> None:
        self.slots[self.index] = NOT_ACCEPTING

    def least_other(self) -> int | None:
        """The fewest connections any other accepting front end holds (None: no other is accepting)."""
        others = [n for i, n in enumerate(self.slots) if i != self.index and n != NOT_ACCEPTING]
        return min(others) if others else None


class BalancedAcceptor:
    """Accepts on a shared listening socket for one front end (see the module docstring)."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 shares: ConnectionShares, connections: Callable[[], int], *, slack: int = SLACK,
                 defer_s: float = DEFER_S) -> None:
        self.sock = sock
        self.factory = protocol_factory
        self.shares = shares
        self.connections = connections  # this process's open connections (uvicorn's server state)
        self.slack = slack
        self.defer_s = defer_s
        self.accepted = 0
        self.deferred = 0
        self._connecting: set[asyncio.Task[object]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading = False
        self._paused = False  # out of descriptors or memory: no accepting until the pause ends
        self._open = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._open = True
        self.shares.publish(self._count())  # then at each change: accept, set-up, close
        self._read()
        log.info("accepting connections on %s, taking turns with the other front ends", _address(self.sock))

    def close(self) -> None:
        """Stop accepting (the socket itself is closed by its owner); the siblings no longer wait for this one."""
        self._open = False
        self._unread()
        if self._timer is not None:
            self._timer.cancel()
        self.shares.withdraw()

    async def connections_made(self) -> None:
        """Wait until the connections already accepted are set up (their protocols exist): a server shutting
        down after `close` then finds every one of them among its connections."""
        await asyncio.gather(*self._connecting, return_exceptions=True)

    def closed(self) -> None:
        """One of this front end's connections closed (its protocol says so)."""
        if self._open:  # once closed the slot stays NOT_ACCEPTING
            self.shares.publish(self._count())

    def _count(self) -> int:
        return self.connections() + len(self._connecting)

    def _read(self) -> None:
        if self._open and not self._reading and not self._paused:
            assert self._loop is not None
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._reading = True

    def _unread(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        """Connections wait: take them while this front end is within the slack of its least-loaded sibling
        (re-read before each: the siblings take theirs meanwhile); past it, leave the next to the siblings for
        `defer_s`."""
        self.shares.publish(self._count())  # then each accept publishes its own
        for _ in range(ACCEPTS_PER_READINESS):
            if should_defer(self._count(), self.shares.least_other(), self.slack):
                self.deferred += 1
                self._unread()
                assert self._loop is not None
                self._timer = self._loop.call_later(self.defer_s, self._after_deferring)
                return
            if not self._accept():
                return  # none left (or a sibling took it, or a pause began)

    def _after_deferring(self) -> None:
        """A connection still waiting now was not taken by a sibling in time: take it; then listen again."""
        self._timer = None
        if self._open:
            try:
                self._accept()
            finally:  # listen again even if the accept failed (not while a pause `_accept` just began)
                self._read()

    def _end_pause(self) -> None:
        self._timer = None
        self._paused = False
        self._read()

    def _accept(self) -> bool:
        """Take one waiting connection; False when there was none to take (or accepting has paused)."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):  # a sibling took it
            return False
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("cannot accept a connection (%s): pausing accepts for %.0f s", exc, RESOURCE_PAUSE_S)
                self._paused = True
                self._unread()
                assert self._loop is not None
                self._timer = self._loop.call_later(RESOURCE_PAUSE_S, self._end_pause)
                return False
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):  # the client gave up while queued: the next may wait
                return True
            raise
        conn.setblocking(False)
        self.accepted += 1
        assert self._loop is not None
        task = self._loop.create_task(self._connect(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connected)
        self.shares.publish(self._count())
        return True

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._connecting.discard(task)
        if self._open:
            self.shares.publish(self._count())

    async def _connect(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self.factory, conn)
        except Exception:  # noqa: BLE001 - one connection's failure must not stop the accepting
            log.exception("a connection could not be set up")
            conn.close()
