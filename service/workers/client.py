"""The front end's side of the engine connection: remote inference and forwarded requests.

`EngineClient` holds one connection to the engine and the process's shared-memory arena.
`RemoteExecutor` stands where a version's `Batcher` stands in the single-process server, with its
`submit(inputs, deadline) -> BatchOutput` and its errors: the engine's batcher of that version
queues and computes the request, and its error comes back as the same class (Overloaded with its
Retry-After, DeadlineExceeded, BatcherStopped when the version was swapped out so the caller
retries the new one, ModelNotReady). A cancelled submit (client gone) cancels the engine's request
too; its block is reused only once the engine has let go of it.

Groups: the single-image submits of one event-loop turn to one version go to the engine as one request
of several rows (`_Group`, at most `1 / GROUP_SHARE` of the version's max batch, so the engine's batches
still fill to within that), written into one block and answered by one reply that is split back into
each submit's own row. The engine counts a group as the requests it carries (statistics, metrics), so
the per-request work of the hand-off (a control message, a block, a reply, the engine's queue entry and
answer) is paid once per group, not once per request: under load a front end sends tens of requests per
turn. Nothing waits to form a group: it is sent with the turn's frame, as a lone submit is. Only submits
whose deadlines lie within `GROUP_DEADLINE_SLACK_S` of each other share a group (its deadline is their
earliest, so none is computed after its own); a submit of several images goes alone. A request whose
row is not finite fails alone (each checks its own row); a cancelled one leaves its group (the group is
cancelled in the engine when no request is left in it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.batcher import BatcherStopped, BatchLimits, BatchOutput
from service.errors import InferenceFailed, ModelNotReady, ServiceError
from service.workers.protocol import ModelTable, decode_error
from service.workers.transport import Arena, Block, Channel, shm_directory, shm_free_bytes

log = logging.getLogger("vitserve.frontend")

ENGINE_GONE = "the inference engine is not reachable"


#: a group holds at most this share of its version's max batch size (at least one request)
GROUP_SHARE = 8
#: submits whose deadlines lie this close share a group (whose deadline is the earliest of theirs)
GROUP_DEADLINE_SLACK_S = 0.005


@dataclass
class _Pending:
    future: asyncio.Future[Any] | None
    block: Block | None = None
    group: _Group | None = None
    #: a forwarded request's: called when the engine's app asks for the next piece of its body
    on_more: Callable[[], None] | None = None


#: sends one piece of a forwarded request's body to the engine (`more`: whether pieces follow)
BodyDelivery = Callable[[bytes, bool], None]


class BodySource(Protocol):
    """A forwarded request's body as the front end reads it from its client (service/workers/forward.py)."""

    def wanted(self, deliver: BodyDelivery) -> None:
        """The engine's app asks for the next piece: read it from the client and `deliver` it."""


class _Member:
    """One submit in a group: its future, its inputs and, once the group is sent, its first row there."""

    __slots__ = ("future", "inputs", "row", "group")

    def __init__(self, future: asyncio.Future[BatchOutput], inputs: np.ndarray) -> None:
        self.future = future
        self.inputs = inputs
        self.row = -1
        self.group: _Group | None = None


class _Group:
    """The single-image submits of one loop turn to one version (the same input shape and deadline, within the
    slack), sent to the engine as one request."""

    __slots__ = ("model", "version", "deadline", "limit", "output_bytes", "members", "rid", "live")

    def __init__(self, model: str, version: int, deadline: float | None, limit: int, output_bytes: int) -> None:
        self.model, self.version, self.deadline, self.limit = model, version, deadline, limit
        self.output_bytes = output_bytes  # per image
        self.members: list[_Member] = []
        self.rid: int | None = None  # set when sent
        self.live = 0  # members sent and not cancelled

    def takes(self, model: str, version: int, inputs: np.ndarray, deadline: float | None) -> bool:
        if self.model != model or self.version != version or len(self.members) >= self.limit:
            return False
        first = self.members[0].inputs
        if inputs.shape != first.shape or inputs.dtype != first.dtype:
            return False
        if deadline is None or self.deadline is None:
            return deadline is None and self.deadline is None
        return abs(deadline - self.deadline) <= GROUP_DEADLINE_SLACK_S

    def add(self, member: _Member, deadline: float | None) -> None:
        self.members.append(member)
        member.group = self
        if deadline is not None and self.deadline is not None and deadline < self.deadline:
            self.deadline = deadline


class EngineClient:
    """One front-end process's connection to the engine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arena = Arena(f"vitserve-{os.getpid()}-{secrets.token_hex(4)}")
        self.table: ModelTable | None = None
        self.on_table: Callable[[ModelTable], None] | None = None
        self.connected = False
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._channel: Channel | None = None
        self._first_table: asyncio.Event | None = None
        self._shm_short = False
        self._open: list[_Group] = []  # this turn's groups, sent with its frame

    async def connect(self) -> None:
        """Connect and wait for the engine's model table."""
        self._first_table = asyncio.Event()
        _, self._channel = await asyncio.get_running_loop().create_unix_connection(
            lambda: Channel(self._dispatch, self._lost, self._send_groups), str(self.path))
        self.connected = True
        free = shm_free_bytes()
        log.info("shared memory for request tensors in %s: %s MiB free", shm_directory(),
                 "?" if free is None else free >> 20)
        self._send(("hello", os.getpid()))
        await self._first_table.wait()
        if not self.connected:
            raise ModelNotReady(ENGINE_GONE)

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self.arena.close()

    def _send(self, message: Any) -> None:
        if self._channel is None or not self.connected:
            raise ModelNotReady(ENGINE_GONE)
        self._channel.send(message)

    def _lost(self) -> None:
        self.connected = False
        for pending in self._pending.values():
            if pending.group is not None:
                self._fail_group(pending.group, ModelNotReady, ENGINE_GONE)
            elif pending.future is not None and not pending.future.done():
                pending.future.set_exception(ModelNotReady(ENGINE_GONE))
        self._pending.clear()
        for group in self._open:
            self._fail_group(group, ModelNotReady, ENGINE_GONE)
        self._open = []
        if self._first_table is not None:
            self._first_table.set()

    def _dispatch(self, message: Any) -> None:
        kind = message[0]
        if kind == "table":
            self.table = message[1]
            if self.on_table is not None:
                self.on_table(self.table)
            if self._first_table is not None:
                self._first_table.set()
        elif kind == "segment_ok":  # both processes map it now: the name can go
            segment = self.arena.segments.get(message[1])
            if segment is not None:
                segment.path.unlink(missing_ok=True)
        elif kind == "more":  # a forwarded request's app reads its body: the next piece, please
            pending = self._pending.get(message[1])
            if pending is not None and pending.on_more is not None:
                pending.on_more()
        else:  # done / error / cancelled / http_response
            pending = self._pending.pop(message[1], None)
            if pending is None:
                return
            if pending.group is not None:
                self._answer_group(pending, message)
            elif pending.future is not None and not pending.future.done():
                pending.future.set_result(message)  # the awaiting request copies its outputs, then frees the block
            elif pending.block is not None:  # its request was cancelled: the engine let go of the block now
                self._release(pending.block)

    async def _request(self, message: tuple[Any, ...], rid: int, block: Block | None,
                       on_more: Callable[[], None] | None = None) -> Any:
        """Send and wait for the answer; on cancellation tell the engine (the block waits for its reply)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, block, on_more=on_more)
        try:
            self._send(message)
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # answered before we resumed: nothing left there
                if block is not None:
                    self._release(block)
            elif self.connected and rid in self._pending:
                self._send(("cancel", rid))
            raise
        except BaseException:
            self._pending.pop(rid, None)
            if block is not None:
                self._release(block)
            raise

    def readiness_off(self) -> None:
        """Tell the engine this front end is draining (its `vitserve_server_ready` goes to 0)."""
        if self.connected and self._channel is not None:
            self._channel.send(("readiness_off",))

    def _release(self, block: Block) -> None:
        """Free a block; a segment that this left idle and released is unmapped by the engine too."""
        for index in self.arena.release(block):
            if self.connected and self._channel is not None:
                self._channel.send(("unmap", index))

    async def infer(self, model: str, version: int, inputs: np.ndarray, deadline: float | None,
                    output_bytes: int, group: int = 1) -> BatchOutput:
        """`inputs` through the engine's batcher of (model, version); the outputs come back in shared memory.
        `group` > 1: a single-image submit may share one engine request with up to `group` - 1 others of this
        loop turn (see the module docstring); `output_bytes` is then its own row's."""
        if group > 1 and inputs.shape[0] == 1:
            member = self._join(model, version, inputs, deadline, output_bytes, group)
            try:
                return await member.future
            except asyncio.CancelledError:
                self._leave(member)
                raise
        rid = next(self._ids)
        block = self._block(max(inputs.nbytes, output_bytes))
        if block is None:
            reply = await self._request(
                ("submit", rid, model, version, None, 0, 0, inputs.shape, inputs.dtype.str, deadline, inputs),
                rid, None)
            return self._output(reply, lambda shape, dtype: reply[7])
        segment = self.arena.segments[block.segment]
        segment.write(block.offset, inputs)
        reply = await self._request(
            ("submit", rid, model, version, block.segment, block.offset, block.size, inputs.shape,
             inputs.dtype.str, deadline, None), rid, block)
        try:
            return self._output(reply, lambda shape, dtype: segment.read(block.offset, shape, dtype))
        finally:
            self._release(block)

    # -- groups --------------------------------------------------------------------------------
    def _join(self, model: str, version: int, inputs: np.ndarray, deadline: float | None, output_bytes: int,
              limit: int) -> _Member:
        if self._channel is None or not self.connected:
            raise ModelNotReady(ENGINE_GONE)
        member = _Member(asyncio.get_running_loop().create_future(), inputs)
        for group in self._open:
            if group.takes(model, version, inputs, deadline):
                group.add(member, deadline)
                return member
        group = _Group(model, version, deadline, limit, output_bytes)
        group.add(member, deadline)
        self._open.append(group)
        self._channel.flush_soon()  # the group goes with this turn's frame
        return member

    def _leave(self, member: _Member) -> None:
        """A cancelled submit: out of its group before it is sent; after, the group is cancelled in the engine
        once no submit is left in it (its block is released when the engine answers)."""
        group = member.group
        if group is None:
            return
        if group.rid is None:  # still collecting this turn
            group.members.remove(member)
        elif group.rid in self._pending:  # sent, not answered yet
            group.live -= 1
            if group.live == 0 and self.connected and self._channel is not None:
                self._channel.send(("cancel", group.rid))

    def _send_groups(self) -> None:
        """The turn's groups into the frame about to be sent (the channel calls this before it writes)."""
        groups, self._open = self._open, []
        for group in groups:
            members = [m for m in group.members if not m.future.done()]
            if not members:
                continue
            group.members = members
            try:
                self._send_group(group)
            except Exception as exc:  # noqa: BLE001 - every submit gets an answer; nothing was sent
                pending = self._pending.pop(group.rid, None) if group.rid is not None else None
                if pending is not None and pending.block is not None:
                    self._release(pending.block)
                error = exc if isinstance(exc, ServiceError) else InferenceFailed(
                    f"sending the request to the engine failed ({type(exc).__name__})")
                for m in members:
                    if not m.future.done():
                        m.future.set_exception(error)

    def _send_group(self, group: _Group) -> None:
        members = group.members
        rid = group.rid = next(self._ids)
        group.live = len(members)
        for row, m in enumerate(members):
            m.row = row
        first = members[0].inputs
        shape = (len(members), *first.shape[1:])
        row_bytes = first.nbytes
        block = self._block(max(row_bytes, group.output_bytes) * len(members))
        if block is None:
            stacked = np.concatenate([m.inputs for m in members])
            self._pending[rid] = _Pending(None, None, group)
            self._send(("submit", rid, group.model, group.version, None, 0, 0, shape, first.dtype.str,
                        group.deadline, stacked, len(members)))
            return
        self._pending[rid] = _Pending(None, block, group)  # (a failure from here on frees the block)
        segment = self.arena.segments[block.segment]
        for row, m in enumerate(members):
            segment.write(block.offset + row * row_bytes, m.inputs)
        self._send(("submit", rid, group.model, group.version, block.segment, block.offset, block.size, shape,
                    first.dtype.str, group.deadline, None, len(members)))

    def _answer_group(self, pending: _Pending, reply: Any) -> None:
        """The engine's answer to a group, split into each submit's own row (a copy of the block, read once)."""
        group, block = pending.group, pending.block
        assert group is not None
        try:
            if reply[0] == "done":
                shape, dtype, queue_s, compute_s, batch_size = reply[2:7]
                if block is None:
                    outputs = reply[7]
                else:
                    outputs = self.arena.segments[block.segment].read(block.offset, shape, dtype)
                all_finite = reply[8]
                for m in group.members:
                    if not m.future.done():
                        row = outputs[m.row:m.row + 1]
                        finite = True if all_finite else bool(np.isfinite(row).all())
                        m.future.set_result(BatchOutput(row, queue_s, compute_s, batch_size, finite))
            elif reply[0] == "error":
                for m in group.members:
                    if not m.future.done():
                        m.future.set_exception(decode_error(*reply[2:]))
            else:  # cancelled: every submit had left
                for m in group.members:
                    m.future.cancel()
        except Exception as exc:  # noqa: BLE001 - every submit gets an answer
            for m in group.members:
                if not m.future.done():
                    failed = InferenceFailed(f"reading the engine's answer failed ({type(exc).__name__})")
                    m.future.set_exception(failed)
        finally:
            if block is not None:
                self._release(block)

    @staticmethod
    def _fail_group(group: _Group, error: type[ServiceError], message: str) -> None:
        for m in group.members:
            if not m.future.done():
                m.future.set_exception(error(message))

    def _block(self, nbytes: int) -> Block | None:
        """A block of shared memory for a request's tensors (a new segment announced to the engine), or None when
        none can be had: the tensors then travel inline (slower, still answered; logged when that starts and
        when it ends, not for every request while it lasts)."""
        try:
            block, created = self.arena.allocate(nbytes)
        except OSError as exc:
            if not self._shm_short:
                log.warning("no shared memory for a request of %d bytes (%s): sending tensors inline until there "
                            "is", nbytes, exc)
                self._shm_short = True
            return None
        if self._shm_short:
            log.info("shared memory available again")
            self._shm_short = False
        if created is not None:
            self._send(("segment", block.segment, str(created.path)))
        return block

    @staticmethod
    def _output(reply: Any, outputs: Callable[[tuple[int, ...], str], np.ndarray]) -> BatchOutput:
        if reply[0] == "done":
            shape, dtype, queue_s, compute_s, batch_size = reply[2:7]
            return BatchOutput(outputs(shape, dtype), queue_s, compute_s, batch_size, reply[8])
        if reply[0] == "error":
            raise decode_error(*reply[2:])
        raise InferenceFailed(f"unexpected engine reply {reply[0]!r}")

    async def forward(self, scope: dict[str, Any], body: BodySource | None
                      ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """An HTTP request answered by the engine's app: (status, headers, body). The head goes first; the body
        (None: the request has none) follows piece by piece as the app reads it, so a request the app refuses
        unread (an unknown route or model, a body over the route's own limit, no API key) is answered without
        its body being read. Cancelled (its client left): the engine's app sees its client go."""
        rid = next(self._ids)

        def deliver(piece: bytes, more: bool) -> None:
            if self.connected and self._channel is not None and rid in self._pending:
                self._channel.send(("body", rid, piece, more))

        reply = await self._request(("http", rid, scope, body is None), rid, None,
                                    None if body is None else lambda: body.wanted(deliver))
        if reply[0] != "http_response":
            raise InferenceFailed(f"unexpected engine reply {reply[0]!r}")
        return reply[2], reply[3], reply[4]


class RemoteExecutor:
    """A version's executor in a front end: `Batcher`'s interface, computed by the engine's batcher."""

    def __init__(self, client: EngineClient, model: str, version: int, limits: BatchLimits,
                 output_bytes_per_image: int) -> None:
        self.client = client
        self.model = model
        self.version = version
        self.name = f"{model}:{version}"
        self.limits = limits
        self._output_bytes = output_bytes_per_image
        self._group = max(1, limits.max_batch_size // GROUP_SHARE)  # requests one engine request may carry
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # the queue lives in the engine: it bounds it (503 + Retry-After from there, before compute)
    queued_images = 0
    inflight_batches = 0

    @property
    def accepting(self) -> bool:
        return not self._stopping and self.client.connected

    def is_overloaded(self, images: int = 1) -> bool:
        return False

    def retry_after_s(self) -> float:
        return 1.0

    def start(self) -> None:
        """Nothing to start: the engine's batcher runs."""

    async def stop(self, timeout_s: float) -> int:
        """Stop intake; wait up to `timeout_s` for this process's requests in flight. Returns those left."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return self._inflight
        return 0

    async def submit(self, inputs: np.ndarray, deadline: float | None = None) -> BatchOutput:
        if self._stopping:
            raise BatcherStopped(f"model {self.name} is not accepting requests")
        size = int(inputs.shape[0]) if inputs.ndim else 0
        self._inflight += 1
        self._idle.clear()
        try:
            return await self.client.infer(self.model, self.version, np.ascontiguousarray(inputs), deadline,
                                           max(1, size) * self._output_bytes, self._group)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

