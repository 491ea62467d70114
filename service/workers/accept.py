"""Front ends take turns at accepting, so connections spread evenly across the processes on one port.

Left to the event loop, the front end that wakes first takes every connection waiting, so a burst of
keep-alive connections (a load balancer's pool, a benchmark's clients) can land on one front end while the
others idle. Here a front end accepts only while it holds no more connections than its least-loaded live
sibling plus a slack; past that it leaves the next connection to the siblings for up to `defer_s`, then takes
it itself, so a busy, stopped or stuck sibling never strands a connection. The counts live in an array every
front end maps (`ConnectionShares`, made by the supervisor); -1 there: not accepting, not waited for. Not
SO_REUSEPORT: the kernel's hash spreads no more evenly, and would strand the connections of a stopped
front end's socket.
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


def should_defer(mine: int, least_other: int | None, slack: int = SLACK) -> bool:
    """Whether a front end holding `mine` connections leaves the next one to a sibling holding `least_other`."""
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
        self._loop: asyncio.AbstractEventLoop  # set by `start`
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
        log.info("accepting connections on %s, taking turns with the other front ends", self.sock.getsockname())

    def close(self) -> None:
        """Stop accepting (the socket itself is closed by its owner); the siblings no longer wait for this one."""
        self._open = False
        self._unread()
        if self._timer is not None:
            self._timer.cancel()
        self.shares.withdraw()

    async def connections_made(self) -> None:
        """Wait until the connections accepted are set up, so a server shutting down finds every one."""
        await asyncio.gather(*self._connecting, return_exceptions=True)

    def closed(self) -> None:
        """One of this front end's connections closed (its protocol says so)."""
        if self._open:  # once closed the slot stays NOT_ACCEPTING
            self.shares.publish(self._count())

    def _count(self) -> int:
        return self.connections() + len(self._connecting)

    def _read(self) -> None:
        if self._open and not self._reading and not self._paused:
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._reading = True

    def _unread(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        """Take the waiting connections while within the slack of the least-loaded sibling (re-read before each);
        past it, leave the next to the siblings for `defer_s`."""
        self.shares.publish(self._count())  # then each accept publishes its own
        for _ in range(ACCEPTS_PER_READINESS):
            if should_defer(self._count(), self.shares.least_other(), self.slack):
                self.deferred += 1
                self._unread()
                self._timer = self._loop.call_later(self.defer_s, self._after_deferring)
                return
            if not self._accept():
                return  # none left (or a sibling took it, or a pause began)

    def _after_deferring(self) -> None:
        """A connection no sibling took in time: take it, then listen again."""
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
        """Take one waiting connection; False when there was none (or accepting has paused)."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):  # a sibling took it
            return False
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("cannot accept a connection (%s): pausing accepts for %.0f s", exc, RESOURCE_PAUSE_S)
                self._paused = True
                self._unread()
                self._timer = self._loop.call_later(RESOURCE_PAUSE_S, self._end_pause)
                return False
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):  # the client gave up while queued: the next may wait
                return True
            raise
        conn.setblocking(False)
        self.accepted += 1
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
        try:
            await self._loop.connect_accepted_socket(self.factory, conn)
        except Exception:  # noqa: BLE001 - one connection's failure must not stop the accepting
            log.exception("a connection could not be set up")
            conn.close()
