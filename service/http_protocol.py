"""HTTP/1.1 connection guards below the ASGI app: header size (431), Host (400), header and body timeouts,
connection cap, bytes of request bodies in flight (503).

uvicorn's httptools protocol accepts a request head of any size (the parser joins a header's
pieces as they arrive, so its cost grows with the square of the header's size), keeps a
connection that sends nothing or half a request open for ever, and has no cap on connections
(its `limit_concurrency` answers plain text and only once a request head has been parsed). This
subclass adds those bounds where the bytes arrive, before a request reaches the application:

- a request line + headers above `max_header_bytes` -> 431 and the connection closes, however the head
  arrives: counted per piece while it is incomplete (so one huge header is never joined) and as parsed
  once complete (a head read whole in one piece, or behind another request in the same piece);
- an HTTP/1.1 request without a Host header, or any request with two -> 400 (RFC 9112 section 3.2);
- a body that would take the bytes of request bodies in flight in this process past `body_budget`
  -> 503 + Retry-After and the connection closes (see `BodyBudget`);
- a request head not complete `header_timeout_s` after the connection opened (or after the first
  byte of a following request) -> 408 and the connection closes (slowloris on headers);
- a body that stalls for `body_timeout_s`, or trickles in slower than MIN_BODY_RATE bytes/s once
  `body_timeout_s` has passed, -> the connection closes, which the application sees as a client
  disconnect (slowloris on bodies: a byte every few seconds must not hold a connection slot for ever);
- more than `max_connections` open connections -> the new one gets 503 and closes at once.

A refusal is a JSON error; requests read before the refused one on the same connection (pipelined)
are answered first, then the refusal, then the connection closes. A client that resets a connection
is a client disconnect for the request in progress (its endpoint counts 499); its answer and the
pipelined requests behind it are dropped without an error.

Two costs per request go too. uvicorn writes a response's head and its body with two writes (two
send syscalls, two segments): here the head waits for the body's first piece, so both leave in one
write (`_OneWrite`). And it tells the application when a connection is lost without a task per request listening for
it: a request's scope carries the connection under DISCONNECT_WATCH, whose `watch_disconnect(cb)`
calls `cb` when the connection is lost (see service/api/common.py: `cancel_on_disconnect`).

A request on one of the hot routes skips ASGI altogether when the class has a `direct` server
(service/api/fast_path.py, `VITSERVE_DIRECT_ROUTES`): its task runs that server's coroutine over
uvicorn's request cycle instead of `cycle.run_asgi(app)`; body buffering, flow control (but for a body of
declared length, collected whole: `collect_body`), keep-alive, pipelining and the guards above are the same for
both.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, Protocol

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.settings import Settings

LINGER_S = 2.0
#: bytes/s a request body must average: each piece extends the body's deadline by len / MIN_BODY_RATE,
#: never beyond `body_timeout_s` from now (Apache's mod_reqtimeout `MinRate`, whose default is 500)
MIN_BODY_RATE = 1024.0
#: scope key of the connection (a `GuardedHttpToolsProtocol`) for `watch_disconnect` / `unwatch_disconnect`
DISCONNECT_WATCH = "vitserve.connection"
#: a declared body up to this size is never refused by the budget: the connection cap already bounds what such
#: bodies hold (max_connections x this), and small requests (a JPEG, a v2 binary tensor) keep being served while
#: large bodies hold the budget
UNBUDGETED_BODY_BYTES = 64 * 1024
#: bytes of a request line beside its target (method, spaces, version, CRLF), for the head's size as parsed
REQUEST_LINE_BYTES = 16
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


class BodyBudget:
    """Bytes of request bodies one process has taken on and not answered yet, bounded by `limit`.

    The endpoints need a body whole, so each connection buffers its body until the request is answered:
    without a bound, many connections each holding a body just short of complete add up to any amount of
    memory. A request holds its declared Content-Length from its head until its answer (a body of
    unknown length, chunked: the bytes as they arrive). What would go past `limit` is refused, unless
    no other request holds any: a lone body up to the body limit always fits. A declared body of at most
    UNBUDGETED_BODY_BYTES holds nothing: its memory is bounded by the connection cap."""

    __slots__ = ("limit", "in_flight")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def fits(self, amount: int, held: int = 0) -> bool:
        """Whether a request that holds `held` bytes may take `amount` more."""
        return self.in_flight + amount <= self.limit or self.in_flight <= held

    def take(self, amount: int) -> None:
        self.in_flight += amount

    def release(self, amount: int) -> None:
        self.in_flight -= amount


class _Held:
    """The budget a request holds, released when its answer is complete or its connection is lost."""

    __slots__ = ("cycle", "amount")

    def __init__(self, cycle: RequestResponseCycle, amount: int) -> None:
        self.cycle = cycle
        self.amount = amount


class HeldBodies:
    """What one connection's requests hold of the process's `BodyBudget`, oldest first."""

    __slots__ = ("budget", "held", "streaming")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held: deque[_Held] = deque()
        self.streaming: _Held | None = None  # the request whose body of unknown length is arriving

    def hold(self, cycle: RequestResponseCycle, amount: int) -> None:
        """`amount` for the request's declared body (-1: unknown, held as it arrives)."""
        held = _Held(cycle, max(amount, 0))
        self.budget.take(held.amount)
        self.held.append(held)
        if amount < 0:
            self.streaming = held

    def grow(self, cycle: RequestResponseCycle | None, size: int, active: RequestResponseCycle | None) -> bool:
        """Take `size` more bytes for a streaming body; False when they do not fit (the body is refused).
        A request waiting behind another (pipelined) takes what one read brought; it is refused, if need be,
        once it is answered and reads again."""
        held = self.streaming
        if held is None or held.cycle is not cycle:
            return True
        if not self.budget.fits(size, held.amount) and held.cycle is active:
            return False
        self.budget.take(size)
        held.amount += size
        return True

    def release_answered(self) -> None:
        held = self.held
        while held and held[0].cycle.response_complete:
            entry = held.popleft()
            self.budget.release(entry.amount)
            if entry is self.streaming:  # answered before its body ended (413 mid-stream): the rest is dropped
                self.streaming = None

    def release_all(self) -> None:
        held, self.held, self.streaming = self.held, deque(), None
        for entry in held:
            self.budget.release(entry.amount)


def admit_head(url: bytes, headers: list[tuple[bytes, bytes]], http_10: bool, max_header_bytes: int,
               max_body_bytes: int, budget: BodyBudget) -> int:
    """Check a complete head: its size, its Host, its body's place in the budget. Returns the bytes to hold
    for its body (-1: unknown, held as they arrive); raises _Refused(status, message, retry_after)."""
    size, hosts, length, streamed = len(url) + REQUEST_LINE_BYTES, 0, None, False
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            streamed = True
    if size > max_header_bytes:
        raise _Refused(431, head_too_large(max_header_bytes), False)
    if hosts > 1:
        raise _Refused(400, "more than one Host header", False)
    if not hosts and not http_10:
        raise _Refused(400, "an HTTP/1.1 request needs a Host header", False)
    if streamed:
        return -1
    try:
        declared = int(length) if length is not None else 0
    except ValueError:
        return 0  # the body limit answers 400
    if declared <= UNBUDGETED_BODY_BYTES or declared > max_body_bytes:
        return 0  # a small body (bounded by the connection cap), or the body limit answers 413 unread
    if not budget.fits(declared):
        raise _Refused(503, over_budget(budget), True)
    return declared


def head_too_large(max_header_bytes: int) -> str:
    return f"request line and headers exceed {max_header_bytes} bytes"


def over_budget(budget: BodyBudget) -> str:
    return f"request bodies in flight would exceed this server's {budget.limit} bytes; retry later"


def write_refusal(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, status: int, message: str,
                  retry_after: bool) -> bool:
    """Write `status` with a JSON error and shut our side; False when the transport cannot (closed instead).

    A lingering close: the caller keeps reading and dropping what the client still sends for up to LINGER_S,
    so the kernel does not reset the connection (and lose the answer) because unread bytes remain."""
    if not transport.can_write_eof():
        transport.close()
        return False
    body = json.dumps({"error": message}).encode()
    head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]), b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
    if retry_after:
        head.append(b"retry-after: 1\r\n")
    transport.write(b"".join(head) + b"\r\n" + body)
    transport.write_eof()
    loop.call_later(LINGER_S, transport.close)
    return True


class DisconnectWatchers:
    """The callbacks of the requests that wait on one client's departure (`watch_disconnect`): each is called
    once when the client goes (`fire`), or soon when it is added after. Vitserve's HTTP protocol keeps one per
    connection."""

    __slots__ = ("callbacks", "gone")

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.gone = False

    def add(self, callback: Callable[[], None]) -> None:
        if self.gone:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self.callbacks.append(callback)

    def remove(self, callback: Callable[[], None]) -> None:
        try:
            self.callbacks.remove(callback)
        except ValueError:  # already called
            pass

    def fire(self) -> None:
        """The client is gone: call every callback now."""
        self.gone = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; `GuardedHttpToolsProtocol._refused` says how to answer
    (the parser wraps a callback's exception, so its arguments travel beside it)."""


class DirectServer(Protocol):
    """Serves some requests without ASGI (service/api/fast_path.py: `DirectRoutes`)."""

    def serve(self, connection: GuardedHttpToolsProtocol, cycle: RequestResponseCycle
              ) -> Coroutine[Any, Any, None] | None:
        """The coroutine answering the cycle's request, or None to leave it to the ASGI app."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above (class attributes, set by `guarded_protocol`)."""

    max_header_bytes = 32 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections = 1024
    max_body_bytes = 32 * 1024 * 1024
    body_budget = BodyBudget(128 * 1024 * 1024)  # shared by every connection of the class
    direct: DirectServer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or inside a request head
        self._head_bytes = 0
        self._events = 0  # request heads and messages completed on this connection
        self._timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0  # loop time by which the body must have progressed (see MIN_BODY_RATE)
        self._discarding = False  # answered and closing: read and drop what the client still sends
        self._watchers = DisconnectWatchers()  # the requests in progress on this connection
        self._direct_cycle: RequestResponseCycle | None = None  # the last cycle handed to `direct`
        self._active: RequestResponseCycle | None = None  # the request being answered (others wait in `pipeline`)
        self._collecting: RequestResponseCycle | None = None  # whose body is collected whole (`collect_body`)
        self._pieces: list[bytes] = []  # its pieces so far
        self._held = HeldBodies(self.body_budget)
        # set by a parser callback before it raises _Refused: (status, message, retry_after, cycle whose body
        # was refused or None for a head)
        self._refused: tuple[int, str, bool, RequestResponseCycle | None] | None = None
        self._refusal: tuple[int, str, bool] | None = None  # to answer once the requests before it are answered

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's parameter is BaseTransport; a TCP server gives a Transport
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._reject(503, f"too many connections (limit {self.max_connections})", True)
            return
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        # uvicorn marks only the last request read as disconnected; with requests pipelined behind it the
        # one being answered would write to the closed transport (an error and a traceback per request)
        active = self._active
        if active is not None and not active.response_complete:
            active.disconnected = True
            active.message_event.set()
        if self.pipeline:
            self.logger.info("connection closed with %d pipelined request(s) not started", len(self.pipeline))
        super().connection_lost(exc)
        self._collecting, self._pieces = None, []
        self._held.release_all()
        self._watchers.fire()

    def watch_disconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when this connection is lost; soon, if it already is."""
        self._watchers.add(callback)

    def unwatch_disconnect(self, callback: Callable[[], None]) -> None:
        self._watchers.remove(callback)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, then time what is left incomplete. A timer is armed only for a head or a body
        still incomplete after this piece: a request that arrives whole (the usual case) costs no timer."""
        if self._discarding or self._refusal is not None or self.transport.is_closing():
            return
        # the next request on a kept-alive connection has begun: its head is timed from now
        head_begins = self._in_head and self._timer is None and self._idle()
        body_progress = not self._in_head
        if body_progress:  # extend the body's deadline by what these bytes earn, at most a full timeout from now
            self._body_deadline = min(self._body_deadline + len(data) / MIN_BODY_RATE,
                                      self.loop.time() + self.body_timeout_s)
        events = self._events
        if not self._feed(data) or self.transport.is_closing():
            return
        if not self._in_head:  # a body still incomplete (perhaps begun by this piece): its deadline
            if body_progress or self._timer is None:
                self._arm(self._body_deadline - self.loop.time())
            return
        if events != self._events:  # this piece completed a request (a following head, if begun, is not timed
            # until the request has been answered, as a pipelined one)
            self._head_bytes = 0
            return
        # bytes of a head still incomplete after this piece
        if head_begins:
            self._arm(self.header_timeout_s)
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, head_too_large(self.max_header_bytes))

    def _feed(self, data: bytes) -> bool:
        """uvicorn's parsing of a piece (`HttpToolsProtocol.data_received`), with this protocol's refusals
        answered as such (JSON, after the requests before them); False when parsing stopped."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            refused, self._refused = self._refused, None
            if refused is None:
                self.logger.warning("Invalid HTTP request received.")
                refused = (400, f"invalid HTTP request: {exc}", False, None)
            self._refuse(*refused)
            return False
        return True

    # -- parser callbacks ------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        try:
            amount = admit_head(self.url, self.headers, self.parser.get_http_version() == "1.0",
                                self.max_header_bytes, self.max_body_bytes, self.body_budget)
        except _Refused as exc:
            status, message, retry_after = exc.args
            self._raise(status, message, retry_after=retry_after)
        self._in_head, self._head_bytes = False, 0
        self._events += 1
        self._body_deadline = self.loop.time() + self.body_timeout_s
        self._disarm()  # the head's timer; the body's is armed once the piece is parsed, if the body is incomplete
        super().on_headers_complete()
        self.scope[DISCONNECT_WATCH] = self  # type: ignore[literal-required]  # an extension key of vitserve's in uvicorn's TypedDict scope
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # this request's cycle (not an upgrade)
            if cycle is not self._direct_cycle:  # answered through ASGI (the direct path writes once itself)
                cycle.transport = _OneWrite(self.transport, self.loop)  # type: ignore[assignment]  # duck-types the writes a cycle makes
            if amount:
                self._held.hold(cycle, amount)
        self._direct_cycle = None

    def _raise(self, status: int, message: str, *, retry_after: bool = False,
               cycle: RequestResponseCycle | None = None) -> NoReturn:
        self._refused = (status, message, retry_after, cycle)
        raise _Refused(message)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not self._held.grow(cycle, len(body), self._active):
            self._raise(503, over_budget(self.body_budget), retry_after=True, cycle=cycle)
        if cycle is self._collecting and not cycle.response_complete:
            self._pieces.append(body)  # no pause, no wake-up: the reader waits for the message's end
            return
        super().on_body(body)

    def collect_body(self, cycle: RequestResponseCycle) -> None:
        """Collect the rest of the active request's body as it arrives, reading on, for a reader that waits for
        its end (`more_body` false) and takes it whole (`collected`). uvicorn pauses reading past 64 KB until
        the application takes each piece: for a tensor body of several hundred KB, a pause, a resume, a wake-up
        of the reader and a copy per piece. Only for a body of declared length, which the budget holds in
        full from its head: collecting takes no memory the budget has not granted. The pieces are kept as
        they came and joined once, as the piecewise reader joins them."""
        self._collecting, self._pieces = cycle, []
        self.flow.resume_reading()

    def collected(self, cycle: RequestResponseCycle) -> bytes:
        """The body `collect_body` gathered (after what uvicorn had buffered before), whole; collecting ends."""
        pieces: list[bytes] = []
        if cycle is self._collecting:
            pieces, self._collecting, self._pieces = self._pieces, None, []
        body = b"".join((cycle.body, *pieces))
        cycle.body = bytearray()
        return body

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._held.streaming = None
        self._in_head, self._head_bytes = True, 0
        self._events += 1
        self._disarm()  # the application has the request; uvicorn's keep-alive timer takes over after it

    def on_response_complete(self) -> None:
        """Release the budget of the requests answered; answer a refusal waiting for them, else go on."""
        self._held.release_answered()
        refusal = self._refusal
        if refusal is not None and not self.pipeline:
            self._refusal = None
            self.server_state.total_requests += 1
            if not self.transport.is_closing():
                self._reject(*refusal)
            return
        super().on_response_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Start the request's task: the direct server's coroutine for a route it serves, else the ASGI app
        (also for a pipelined request, started here once the one before it has been answered)."""
        self._active = cycle
        coroutine = self.direct.serve(self, cycle) if self.direct is not None and app is self.app else None
        if coroutine is None:
            super()._start_asgi_task(cycle, app)
            return
        self._direct_cycle = cycle
        if self.config.reset_contextvars:  # as uvicorn starts an ASGI task
            task = self.loop.create_task(coroutine, context=contextvars.Context())
        else:
            task = self.loop.create_task(coroutine)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # uvicorn's shutdown waits for these: a request accepted before SIGTERM completes

    # -- timers ----------------------------------------------------------------------------
    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._on_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._idle():
                self._reject(408, f"request headers not received within {self.header_timeout_s:g} s")
            return
        if self.flow.read_paused:  # we stopped reading (the app is behind), not the client
            self._body_deadline = self.loop.time() + self.body_timeout_s
            self._arm(self.body_timeout_s)
            return
        self.logger.info("closing a connection whose request body stalled or trickled (under %.0f B/s after %.0f s)",
                         MIN_BODY_RATE, self.body_timeout_s)
        self.transport.close()

    def _refuse(self, status: int, message: str, retry_after: bool = False,
                cycle: RequestResponseCycle | None = None) -> None:
        """Refuse a request and read no more: at once when nothing is being answered, else once the requests
        before it are. `cycle`: the request being answered, whose body was refused: its application sees a
        client disconnect (its answer is dropped) and the refusal goes out now."""
        self._disarm()
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
            else:
                self._answer(status, message, retry_after)
        elif self._idle():
            self._answer(status, message, retry_after)
        else:
            self._refusal = (status, message, retry_after)

    def _reject(self, status: int, message: str, retry_after: bool = False) -> None:
        """Answer `status` with a JSON error (only when no response is in progress) and close."""
        self._disarm()
        if not self._idle():
            self.transport.close()
            return
        self._answer(status, message, retry_after)

    def _answer(self, status: int, message: str, retry_after: bool) -> None:
        """Write the JSON error, then read and drop what the client still sends until the close."""
        if write_refusal(self.transport, self.loop, status, message, retry_after):
            self._discarding = True
            self.flow.resume_reading()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's contract (True: stay half-open); uvicorn annotates None
        if self._discarding:
            self.transport.close()
        return super().eof_received()


class _OneWrite:
    """A request cycle's view of the transport: the response head (uvicorn writes it alone, on
    `http.response.start`) is held until the body's first piece and both go out in one `writelines`.
    A head with no body write in the same turn (HEAD, a body that comes later) goes out at the loop's
    next turn, and before a close. Bytes are never reordered: a held head goes first."""

    __slots__ = ("_transport", "_loop", "_head", "_flush_handle")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():  # the client left (lost before the protocol hears of it): nobody reads
            return
        head = self._head
        if head is not None:
            self._head = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._transport.writelines((head, data))
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            self._flush_handle = self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(settings: Settings, direct: DirectServer | None = None) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn should use (`uvicorn.Config(http=...)`), bounded by `settings`; `direct`
    serves the requests it takes without ASGI (None, or `settings.direct_routes` off: all go through ASGI)."""
    return type(
        "VitserveHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_connections": settings.max_connections,
            "max_body_bytes": settings.max_body_bytes,
            "body_budget": BodyBudget(settings.max_body_bytes_in_flight),
            "direct": direct if settings.direct_routes else None,
        },
    )
