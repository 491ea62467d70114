"""service/workers/accept.py: front ends sharing one listening socket take turns at accepting.

Two acceptors in one event loop stand for two front-end processes: a real listening socket, real
connections, the same shared counts; one that never accepts stands for a stopped or stuck front end."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from service.workers import accept as accept_module
from service.workers.accept import NOT_ACCEPTING, BalancedAcceptor, ConnectionShares, should_defer


def run(test: Callable[[socket.socket], Coroutine[Any, Any, None]]) -> Callable[[socket.socket], None]:
    """An async test body run in its own event loop (the listener fixture is passed through)."""
    def wrapper(listener: socket.socket) -> None:
        asyncio.run(test(listener))
    wrapper.__name__ = test.__name__
    wrapper.__doc__ = test.__doc__
    return wrapper


@pytest.mark.parametrize(("mine", "least", "slack", "defer"), [
    (0, None, 2, False),  # no sibling accepting: never wait
    (5, None, 0, False),
    (2, 0, 2, False),  # within the slack
    (3, 0, 2, True),
    (8, 7, 0, True),
    (9, 10, 0, False),
    (45, 40, 2, False),  # a loaded sibling: the slack is an eighth of its count (40 // 8 = 5)
    (46, 40, 2, True),
    (144, 128, 2, False),
    (145, 128, 2, True),
    (20, 8, 20, False),  # the fixed slack when it is the larger
])
def test_a_front_end_defers_only_when_it_holds_more_than_the_least_loaded_sibling_plus_the_slack(
        mine: int, least: int | None, slack: int, defer: bool) -> None:
    assert should_defer(mine, least, slack) is defer


def test_the_least_loaded_sibling_ignores_this_front_end_and_those_not_accepting() -> None:
    slots = [NOT_ACCEPTING] * 4
    shares = ConnectionShares(slots, 1)
    assert shares.least_other() is None
    shares.publish(0)
    assert slots[1] == 0 and shares.least_other() is None  # its own count is not a sibling's
    slots[2], slots[3] = 7, 4
    assert shares.least_other() == 4
    slots[3] = NOT_ACCEPTING  # died or stopped accepting: not waited for
    assert shares.least_other() == 7
    shares.withdraw()
    assert slots[1] == NOT_ACCEPTING


class Echo(asyncio.Protocol):
    """A connection's protocol: counted while open, echoes what it gets."""

    def __init__(self, open_: set[Echo], on_lost: Callable[[], None]) -> None:
        self.open = open_
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)
        self.on_lost()


class FrontEnd:
    """One acceptor with its own connections, as a front-end process holds them."""

    def __init__(self, sock: socket.socket, slots: list[int], index: int, defer_s: float = 0.002,
                 slack: int = 2) -> None:
        self.open: set[Echo] = set()
        self.acceptor = BalancedAcceptor(sock, lambda: Echo(self.open, self.acceptor.closed),
                                         ConnectionShares(slots, index), lambda: len(self.open), slack=slack,
                                         defer_s=defer_s)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield sock
    sock.close()


async def connect(sock: socket.socket, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`n` connections opened at once (a burst, as a pool or a benchmark opens them), each echoing once."""
    port = sock.getsockname()[1]
    pairs = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n)))
    for i, (_, writer) in enumerate(pairs):
        writer.write(b"%03d" % i)
    answers = await asyncio.wait_for(asyncio.gather(*(reader.readexactly(3) for reader, _ in pairs)), 10)
    assert answers == [b"%03d" % i for i in range(n)]  # every connection was served
    return pairs


async def close(pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in pairs:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, writer in pairs), return_exceptions=True)


@run
async def test_a_burst_of_connections_spreads_evenly_across_the_front_ends(listener: socket.socket) -> None:
    slots = [NOT_ACCEPTING] * 2
    twin = listener.dup()  # a second descriptor of the one socket, as each front-end process holds
    # a deferral long enough that a loaded host (one loop runs both acceptors and the 200 clients here, beside
    # `make test`'s other workers) does not outlast it: what expires then is tested by the stuck-sibling test
    # below; this one tests the split
    a, b = FrontEnd(listener, slots, 0, defer_s=1.0), FrontEnd(twin, slots, 1, defer_s=1.0)
    a.acceptor.start()
    b.acceptor.start()
    pairs = await connect(listener, 200)
    assert len(a.open) + len(b.open) == 200
    # within the slack each way (2, or an eighth of the smaller count: the fraction of a loaded front end)
    slack = max(a.acceptor.slack, min(len(a.open), len(b.open)) // accept_module.SLACK_FRACTION)
    assert abs(len(a.open) - len(b.open)) <= 2 * slack + 2, (len(a.open), len(b.open))
    assert slots == [len(a.open), len(b.open)]  # what the siblings read is what each holds
    await close(pairs)
    await asyncio.sleep(0.05)
    assert slots == [0, 0]  # closes are published at once, not at the next accept
    a.acceptor.close()
    b.acceptor.close()
    twin.close()
    assert slots == [NOT_ACCEPTING, NOT_ACCEPTING]


@run
async def test_a_sibling_that_never_accepts_delays_a_connection_but_never_strands_it(
        listener: socket.socket) -> None:
    slots = [NOT_ACCEPTING, 0]  # front end 1 reports no connections but is stopped (SIGSTOP, stuck)
    a = FrontEnd(listener, slots, 0, defer_s=0.005)
    a.acceptor.start()
    started = asyncio.get_running_loop().time()
    pairs = await connect(listener, 20)
    elapsed = asyncio.get_running_loop().time() - started
    assert len(a.open) == 20  # all taken, the ones above the slack after waiting for the sibling
    assert a.acceptor.deferred >= 20 - a.acceptor.slack - 1
    assert elapsed < 5  # bounded by the deferrals, not by the sibling
    slots[1] = NOT_ACCEPTING  # the supervisor marks it dead: no more waiting for it
    more = await connect(listener, 10)
    deferred = a.acceptor.deferred
    assert len(a.open) == 30
    more += await connect(listener, 5)
    assert a.acceptor.deferred == deferred
    await close(pairs + more)
    a.acceptor.close()


def queue_connections(listener: socket.socket, n: int) -> list[socket.socket]:
    """`n` connections completed by the kernel and waiting in the listener's backlog, none accepted yet."""
    clients = []
    for _ in range(n):
        client = socket.create_connection(listener.getsockname())
        clients.append(client)
    return clients


@run
async def test_one_readiness_takes_every_waiting_connection_up_to_the_balance_point(listener: socket.socket) -> None:
    """Under load a front end's event loop turns slowly: one connection per readiness made the last of a burst
    of 256 wait for hundreds of turns. One readiness takes what is waiting while the front end stays within the
    slack of its least-loaded sibling."""
    clients = queue_connections(listener, 10)
    alone = FrontEnd(listener, [NOT_ACCEPTING], 0)
    alone.acceptor.start()
    alone.acceptor._ready()  # the readiness callback, once
    assert alone.acceptor.accepted == 10 and alone.acceptor.deferred == 0
    alone.acceptor.close()
    await alone.acceptor.connections_made()

    clients += queue_connections(listener, 10)
    slots = [NOT_ACCEPTING, 0]  # a sibling with no connections: 0 + 2 of slack, so the third is its turn
    a = FrontEnd(listener, slots, 0)
    a.acceptor.start()
    a.acceptor._ready()
    assert a.acceptor.accepted == 3 and a.acceptor.deferred == 1
    assert slots[0] == 3
    a.acceptor.close()  # the deferral's timer is cancelled with it
    await a.acceptor.connections_made()
    for client in clients:
        client.close()


@run
async def test_one_readiness_takes_at_most_its_quota(listener: socket.socket) -> None:
    clients = queue_connections(listener, 10)
    a = FrontEnd(listener, [NOT_ACCEPTING], 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(accept_module, "ACCEPTS_PER_READINESS", 4)
        a.acceptor.start()
        a.acceptor._ready()
        assert a.acceptor.accepted == 4  # the loop's other work goes on before the next four
        await asyncio.sleep(0.1)  # later readinesses take the rest
    assert a.acceptor.accepted == 10
    a.acceptor.close()
    await a.acceptor.connections_made()
    for client in clients:
        client.close()


@run
async def test_closing_the_acceptor_stops_accepting_and_leaves_the_socket_open(listener: socket.socket) -> None:
    slots = [NOT_ACCEPTING]
    a = FrontEnd(listener, slots, 0)
    a.acceptor.start()
    await close(await connect(listener, 3))
    a.acceptor.close()
    assert listener.fileno() != -1  # its owner (uvicorn's shutdown) closes it
    port = listener.getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # queued in the backlog, never accepted
    writer.write(b"x")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readexactly(1), 0.2)
    assert a.acceptor.accepted == 3
    writer.close()


class FlakyListener(socket.socket):
    """A listening socket whose first `accept` fails with `error` (EMFILE: a process out of descriptors)."""

    calls = 0
    error = errno.EMFILE

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        if self.calls == 1:
            raise OSError(self.error, os.strerror(self.error))
        return super().accept()


@pytest.fixture
def flaky(listener: socket.socket) -> Iterator[FlakyListener]:
    """The listener, through a second descriptor whose first accept fails."""
    sock = FlakyListener(fileno=os.dup(listener.fileno()))
    yield sock
    sock.close()


@pytest.mark.parametrize("deferring", [False, True])
def test_out_of_descriptors_pauses_accepting_instead_of_spinning(
        listener: socket.socket, flaky: FlakyListener, monkeypatch: pytest.MonkeyPatch, deferring: bool) -> None:
    """The pause holds whether the failed accept came straight from a wake-up or after a deferral."""
    monkeypatch.setattr(accept_module, "RESOURCE_PAUSE_S", 0.3)

    async def main() -> None:
        # slack -1 with a sibling at 0: every connection is first left to the sibling (which never takes it)
        slots = [NOT_ACCEPTING, 0] if deferring else [NOT_ACCEPTING]
        a = FrontEnd(flaky, slots, 0, defer_s=0.01, slack=-1 if deferring else 2)
        a.acceptor.start()
        task = asyncio.ensure_future(connect(listener, 1))
        await asyncio.sleep(0.2)
        assert flaky.calls == 1  # failed once, then waited: the level-triggered wake-up is not re-armed
        pairs = await asyncio.wait_for(task, 5)  # served once the pause is over
        # taken at the second call; a readiness then asks once more and finds none waiting (a deferral's
        # fallback takes one and no more)
        assert flaky.calls == (2 if deferring else 3) and len(a.open) == 1
        await close(pairs)
        a.acceptor.close()

    asyncio.run(main())


@run
async def test_after_closing_the_front_end_stays_out_of_its_siblings_reckoning(listener: socket.socket) -> None:
    slots = [NOT_ACCEPTING, NOT_ACCEPTING]
    a = FrontEnd(listener, slots, 0)
    a.acceptor.start()
    pairs = await connect(listener, 3)
    a.acceptor.close()
    await a.acceptor.connections_made()  # what a shutdown waits for: every accepted connection is set up
    assert len(a.open) == 3 and slots[0] == NOT_ACCEPTING
    await close(pairs)  # connections closing while it drains publish nothing
    await asyncio.sleep(0.05)
    assert slots[0] == NOT_ACCEPTING and not a.open


def test_an_unexpected_accept_error_after_a_deferral_does_not_stop_the_accepting(
        listener: socket.socket, flaky: FlakyListener) -> None:
    """The error goes to the event loop's handler (logged, as asyncio's own accept does) and the front end listens
    on: a later connection is still taken."""
    flaky.error = errno.EPERM  # e.g. refused by a firewall rule
    errors: list[BaseException | None] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context.get("exception")))
        a = FrontEnd(flaky, [NOT_ACCEPTING, 0], 0, defer_s=0.01, slack=-1)  # always defers first
        a.acceptor.start()
        pairs = await asyncio.wait_for(connect(listener, 1), 5)
        assert flaky.calls == 2 and len(a.open) == 1
        assert len(errors) == 1 and isinstance(errors[0], OSError) and errors[0].errno == errno.EPERM
        await close(pairs)
        a.acceptor.close()

    asyncio.run(main())
