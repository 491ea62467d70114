"""The front end's side of the engine connection: remote inference, and calls on the engine's state.

`RemoteExecutor` stands where a version's `Batcher` stands in the single-process server: the engine's batcher
queues and computes, and its errors come back as the same classes (BatcherStopped when the version was swapped
out, so the caller retries the new one). A cancelled submit cancels the engine's request; its block is reused
only once the engine has let go of it.

Groups: the single-image submits of one loop turn to one version go to the engine as one request of several
rows (at most `1 / GROUP_SHARE` of its max batch, deadlines within `GROUP_DEADLINE_SLACK_S`, the group's the
earliest), answered by one reply split into each submit's own row; the engine counts it as the requests it
carries. The hop's per-request work (a message, a block, a queue entry, an answer) is then paid once per group,
and nothing waits for a group to fill: it goes with the turn's frame. Any other submit is a group of one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.batcher import BatcherStopped, BatchLimits, BatchOutput
from service.errors import InferenceFailed, ModelNotReady, ServiceError
from service.workers import protocol as msg
from service.workers.transport import Arena, Block, Channel, shm_directory, shm_free_bytes

log = logging.getLogger("vitserve.frontend")

ENGINE_GONE = "the inference engine is not reachable"
#: a group holds at most this share of its version's max batch size (at least one request)
GROUP_SHARE = 8
#: submits whose deadlines lie this close share a group (whose deadline is the earliest of theirs)
GROUP_DEADLINE_SLACK_S = 0.005

@dataclass(slots=True, eq=False)
class _Group:
    """Submits to one version sent as one engine request (same input shape, deadlines within the slack)."""

    model: str
    version: int
    deadline: float | None  # the earliest of its members'
    limit: int
    members: list[_Member] = field(default_factory=list)
    rid: int | None = None  # set when sent
    live: int = 0  # members sent and not cancelled
    block: Block | None = None

    def takes(self, model: str, version: int, inputs: np.ndarray, deadline: float | None) -> bool:
        if self.model != model or self.version != version or len(self.members) >= self.limit:
            return False
        first = self.members[0].inputs
        if inputs.shape != first.shape or inputs.dtype != first.dtype:
            return False
        if deadline is None or self.deadline is None:
            return deadline is None and self.deadline is None
        return abs(deadline - self.deadline) <= GROUP_DEADLINE_SLACK_S

    def fail(self, error: Callable[[], BaseException]) -> None:
        for m in self.members:
            if not m.future.done():
                m.future.set_exception(error())


@dataclass(slots=True, eq=False)
class _Member:
    """One submit in a group; `row`: its first row there, once sent."""

    future: asyncio.Future[BatchOutput]
    inputs: np.ndarray
    output_bytes: int
    group: _Group
    row: int = 0


class EngineClient:
    """One front-end process's connection to the engine, and its shared-memory arena."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arena = Arena(f"vitserve-{os.getpid()}-{secrets.token_hex(4)}")
        self.on_table: Callable[[msg.ModelTable], None] | None = None
        self.connected = False
        self._ids = itertools.count(1)
        self._pending: dict[int, _Group | asyncio.Future[Any]] = {}
        self._channel: Channel | None = None
        self._first_table: asyncio.Event | None = None
        self._shm_short = False
        self._open: list[_Group] = []  # this turn's groups, sent with its frame
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            msg.Table: self._on_table, msg.Done: self._on_answer, msg.Failed: self._on_answer,
            msg.Cancelled: self._on_answer, msg.Result: self._on_answer,
        }

    async def connect(self) -> None:
        """Connect and wait for the engine's model table."""
        self._first_table = asyncio.Event()
        _, self._channel = await asyncio.get_running_loop().create_unix_connection(
            lambda: Channel(lambda m: self._handlers[type(m)](m), self._lost, self._send_groups), str(self.path))
        self.connected = True
        free = shm_free_bytes()
        log.info("shared memory for request tensors in %s: %s MiB free", shm_directory(),
                 "?" if free is None else free >> 20)
        self._send(msg.Hello(os.getpid()))
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

    def _send_if_connected(self, message: Any) -> None:
        if self.connected and self._channel is not None:
            self._channel.send(message)

    def _lost(self) -> None:
        self.connected = False
        for pending in [*self._pending.values(), *self._open]:
            if isinstance(pending, _Group):
                pending.fail(lambda: ModelNotReady(ENGINE_GONE))
            elif not pending.done():
                pending.set_exception(ModelNotReady(ENGINE_GONE))
        self._pending.clear()
        self._open = []
        if self._first_table is not None:
            self._first_table.set()

    # -- the engine's messages -----------------------------------------------------------------------------
    def _on_table(self, message: msg.Table) -> None:
        if self.on_table is not None:
            self.on_table(message.table)
        if self._first_table is not None:
            self._first_table.set()

    def _on_answer(self, reply: msg.Done | msg.Failed | msg.Cancelled | msg.Result) -> None:
        pending = self._pending.pop(reply.rid, None)
        if isinstance(pending, _Group):
            self._answer_group(pending, reply)
        elif pending is not None and not pending.done():
            pending.set_result(reply)

    def readiness_off(self) -> None:
        """Tell the engine this front end is draining (its `vitserve_server_ready` goes to 0)."""
        self._send_if_connected(msg.ReadinessOff())

    def _release(self, block: Block) -> None:
        """Free a block; a segment that this left idle and released is unmapped by the engine too."""
        for index in self.arena.release(block):
            self._send_if_connected(msg.Unmap(index))

    # -- inference -----------------------------------------------------------------------------------------
    async def infer(self, model: str, version: int, inputs: np.ndarray, deadline: float | None,
                    output_bytes: int, group: int = 1) -> BatchOutput:
        """`inputs` through the engine's batcher of (model, version), sent with this turn's frame; a single image
        may share its engine request with up to `group` - 1 others (see the module docstring)."""
        if self._channel is None or not self.connected:
            raise ModelNotReady(ENGINE_GONE)
        limit = group if inputs.shape[:1] == (1,) else 1
        joined = None if limit == 1 else next((g for g in self._open if g.takes(model, version, inputs, deadline)),
                                              None)
        if joined is None:
            joined = _Group(model, version, deadline, limit)
            self._open.append(joined)
            self._channel.flush_soon()
        elif deadline is not None and joined.deadline is not None:
            joined.deadline = min(joined.deadline, deadline)
        member = _Member(asyncio.get_running_loop().create_future(), inputs, output_bytes, joined)
        joined.members.append(member)
        try:
            return await member.future
        except asyncio.CancelledError:
            self._leave(member)
            raise

    def _leave(self, member: _Member) -> None:
        """A cancelled submit leaves its group before it is sent; after, the group is cancelled in the engine once
        no submit is left in it (its block is released when the engine answers)."""
        group = member.group
        if member not in group.members:  # already dropped as cancelled when its group was sent
            return
        if group.rid is None:
            group.members.remove(member)
        elif group.rid in self._pending:
            group.live -= 1
            if group.live == 0:
                self._send_if_connected(msg.Cancel(group.rid))

    def _send_groups(self) -> None:
        """The turn's groups into the frame about to be written (the channel calls this before it writes)."""
        groups, self._open = self._open, []
        for group in groups:
            group.members = [m for m in group.members if not m.future.done()]
            if not group.members:
                continue
            try:
                self._send_group(group)
            except Exception as exc:  # noqa: BLE001 - every submit gets an answer; nothing was sent
                if group.rid is not None and self._pending.pop(group.rid, None) is group and group.block is not None:
                    self._release(group.block)
                error = exc if isinstance(exc, ServiceError) else InferenceFailed(
                    f"sending the request to the engine failed ({type(exc).__name__})")
                group.fail(lambda: error)  # noqa: B023 - called at once, inside the iteration

    def _send_group(self, group: _Group) -> None:
        members = group.members
        rid = group.rid = next(self._ids)
        group.live = len(members)
        rows = 0
        for m in members:
            m.row = rows
            rows += len(m.inputs)
        first = members[0].inputs
        block = group.block = self._block(max(sum(m.inputs.nbytes for m in members),
                                              sum(m.output_bytes for m in members)))
        self._pending[rid] = group  # (a failure from here on frees the block)
        inline = None
        if block is None:
            inline = first if len(members) == 1 else np.concatenate([m.inputs for m in members])
        else:
            segment, at = self.arena.segments[block.segment], block.offset
            for m in members:
                segment.write(at, m.inputs)
                at += m.inputs.nbytes
        seg, offset, size = (None, 0, 0) if block is None else block
        self._send(msg.Submit(rid, group.model, group.version, seg, offset, size, (rows, *first.shape[1:]),
                              first.dtype.str, group.deadline, inline, len(members)))

    def _answer_group(self, group: _Group, reply: msg.Done | msg.Failed | msg.Cancelled | msg.Result) -> None:
        """The engine's answer, split into each submit's own rows (a copy of the block, read once)."""
        block, members = group.block, group.members
        try:
            if isinstance(reply, msg.Done):
                outputs = reply.inline if block is None else self.arena.segments[block.segment].read(
                    block.offset, reply.shape, reply.dtype)
                assert outputs is not None
                for m in members:
                    if m.future.done():
                        continue
                    rows, finite = outputs, reply.finite
                    if len(members) > 1:
                        rows = outputs[m.row:m.row + len(m.inputs)]
                        finite = finite or bool(np.isfinite(rows).all())
                    m.future.set_result(BatchOutput(rows, reply.queue_s, reply.compute_s, reply.batch_size, finite))
            elif isinstance(reply, msg.Failed):
                group.fail(lambda: msg.decode_error(reply.kind, reply.message, reply.retry_after_s))
            elif isinstance(reply, msg.Cancelled):  # every submit had left
                for m in members:
                    m.future.cancel()
            else:
                raise TypeError(type(reply).__name__)
        except Exception as exc:  # noqa: BLE001 - every submit gets an answer
            failure = f"reading the engine's answer failed ({type(exc).__name__})"
            group.fail(lambda: InferenceFailed(failure))
        finally:
            if block is not None:
                self._release(block)

    def _block(self, nbytes: int) -> Block | None:
        """A block of shared memory (a new segment announced to the engine), or None when none can be had: the
        tensors then travel inline (logged when that starts and ends, not per request)."""
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
            self._send(msg.MapSegment(block.segment, str(created.path)))
        return block

    # -- the engine's own state -----------------------------------------------------------------------------
    async def call(self, op: str, *args: Any) -> Any:
        """One of the engine store's methods (service/workers/engine.py's `CALLS`): its value, or its error
        raised here as the same class."""
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._send(msg.Call(rid, op, args))
            reply = await future
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply, msg.Failed):
            raise msg.decode_error(reply.kind, reply.message, reply.retry_after_s)
        if not isinstance(reply, msg.Result):
            raise InferenceFailed(f"unexpected engine reply {type(reply).__name__}")
        return reply.value


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
