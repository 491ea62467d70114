"""Tensors between processes through shared memory; control messages over a unix socket.

A front end's `Arena` carves shared-memory segments (tmpfs files mapped by both processes) into one block per
request in flight: the front end writes the inputs there, the engine computes on a view and writes the outputs
back into the same block, so tensors are never pickled or copied through the socket. A segment's file is
unlinked once the engine has mapped it (nothing is left behind when a process dies). Segments grow
geometrically up to `MAX_SEGMENT_BYTES` and idle smaller ones are released, so a front end holds about what its
requests need. A segment is reserved when created: a full /dev/shm fails there (not as SIGBUS later) and the
request's tensor then travels inline in its message.

Control messages (service/workers/protocol.py) of one event-loop turn go as one frame (`Channel`).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import mmap
import os
import pickle
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service.workers.protocol import KINDS

FIRST_SEGMENT_BYTES = 1 << 20
MAX_SEGMENT_BYTES = 16 << 20
ALIGN = 64
MAX_MESSAGE_BYTES = 1 << 30
_HEADER = struct.Struct("!I")
_CODES = {kind: code for code, kind in enumerate(KINDS)}
_new_tuple = tuple.__new__


def shm_directory() -> Path:
    """tmpfs (/dev/shm) where there is one, so segments are memory, never written to a disk."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def shm_free_bytes() -> int | None:
    """Bytes free where segments are made (None if unknown): logged at start, so a too-small /dev/shm shows."""
    try:
        st = os.statvfs(shm_directory())
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Segment:
    """One mapped shared-memory file."""

    def __init__(self, path: Path, size: int, *, create: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:  # reserved now: a full tmpfs fails here (OSError), not as SIGBUS at a later write
                os.posix_fallocate(fd, 0, size)
            self.size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, self.size)
        except BaseException:
            if create:  # a half-made segment must not hold the memory (or its name) after the failure
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self.path = path

    def array(self, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any] | str) -> np.ndarray:
        """A view of the block at `offset` (no copy): what the engine computes on."""
        return np.ndarray(shape, dtype=dtype, buffer=self.map, offset=offset)

    def write(self, offset: int, array: np.ndarray) -> None:
        """Copy an array's bytes (C order) into the block at `offset` (no view of the block made for it)."""
        self.map[offset:offset + array.nbytes] = np.ascontiguousarray(array)  # type: ignore[call-overload]  # an ndarray is a buffer; numpy's stubs do not declare it

    def read(self, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any] | str) -> np.ndarray:
        """A copy of the array at `offset`, owned by the caller (the block is reused once released)."""
        return np.frombuffer(self.map, dtype, math.prod(shape), offset).reshape(shape).copy()

    def close(self) -> None:
        """Unmap it, and remove its name if still there."""
        self.path.unlink(missing_ok=True)
        try:
            self.map.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with the process
            pass


class Block(NamedTuple):
    """Where a request's tensors lie."""

    segment: int
    offset: int
    size: int


class Arena:
    """The front end's shared memory: segments carved into blocks, first fit, freed blocks merged;
    grown geometrically when a request does not fit, idle smaller segments released."""

    def __init__(self, prefix: str, first_segment_bytes: int = FIRST_SEGMENT_BYTES,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.prefix = prefix
        self.first_segment_bytes = first_segment_bytes
        self.max_segment_bytes = max(first_segment_bytes, max_segment_bytes)
        #: by id; ids (and the files' names) are never reused, so a failed or released one leaves no clash
        self.segments: dict[int, Segment] = {}
        self._free: dict[int, list[tuple[int, int]]] = {}  # per segment: sorted (offset, size)
        self._ids = itertools.count()

    def allocate(self, nbytes: int) -> tuple[Block, Segment | None]:
        """A block of at least `nbytes`, and the segment created for it (to announce) if one was."""
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        for index, free in self._free.items():
            for i, (offset, room) in enumerate(free):
                if room >= size:
                    if room == size:
                        del free[i]
                    else:
                        free[i] = (offset + size, room - size)
                    return Block(index, offset, size), None
        index = next(self._ids)
        largest = max((seg.size for seg in self.segments.values()), default=0)
        seg_size = max(size, min(self.max_segment_bytes, max(self.first_segment_bytes, 2 * largest)))
        segment = Segment(shm_directory() / f"{self.prefix}-{index}", seg_size, create=True)
        self.segments[index] = segment
        self._free[index] = [(size, seg_size - size)] if seg_size > size else []
        return Block(index, 0, size), segment

    def release(self, block: Block) -> list[int]:
        """Free the block; the ids of the idle segments released (all but the largest) for the engine to unmap."""
        free = self._free[block.segment]
        i = bisect.bisect_left(free, (block.offset, 0))
        offset, size = block.offset, block.size
        if i < len(free) and offset + size == free[i][0]:  # merge with the next free block
            size += free[i][1]
            del free[i]
        if i > 0 and free[i - 1][0] + free[i - 1][1] == offset:  # and with the previous one
            offset, size = free[i - 1][0], free[i - 1][1] + size
            del free[i - 1]
            i -= 1
        free.insert(i, (offset, size))
        if len(self.segments) == 1:
            return []
        kept = max(self.segments, key=lambda i: (self.segments[i].size, i))
        released = [index for index, seg in self.segments.items()
                    if index != kept and self._free[index] == [(0, seg.size)]]
        for index in released:
            segment = self.segments.pop(index)
            del self._free[index]
            segment.close()
        return released

    def free_bytes(self) -> int:
        return sum(size for free in self._free.values() for _, size in free)

    def close(self) -> None:
        for segment in self.segments.values():
            segment.close()


class Channel(asyncio.Protocol):
    """Messages over a stream socket: those sent in one event-loop turn go as one frame (a pickled list of plain
    tuples behind a 4-byte length, one write), parsed as its bytes arrive: a batch's answers cost one pickling."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None],
                 before_flush: Callable[[], None] | None = None) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        #: called as a frame is about to be written: what it sends joins the frame (a front end's groups)
        self.before_flush = before_flush
        self._flush_due = False
        self.transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out: list[tuple[Any, ...]] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a unix-socket server gives a Transport

    def data_received(self, data: bytes) -> None:
        buf = self._in
        buf += data
        start = 0
        while len(buf) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buf, start)
            if length > MAX_MESSAGE_BYTES:
                raise ValueError(f"control frame of {length} bytes")
            end = start + _HEADER.size + length
            if len(buf) < end:
                break
            messages = pickle.loads(memoryview(buf)[start + _HEADER.size:end])
            start = end
            for fields in messages:
                self.on_message(_new_tuple(KINDS[fields[0]], fields[1:]))  # (no named tuple's __new__ per message)
        del buf[:start]

    def send(self, message: tuple[Any, ...]) -> None:
        if self.closed or self.transport is None:
            return
        self.flush_soon()
        self._out.append(message)

    def flush_soon(self) -> None:
        """Write this turn's frame at the end of the turn."""
        if not self._flush_due and not self.closed and self.transport is not None:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self.before_flush is not None and not self.closed:
            self.before_flush()
        self._flush_due = False
        if self._out and not self.closed and self.transport is not None:
            data = pickle.dumps([(_CODES[type(m)], *m) for m in self._out], protocol=pickle.HIGHEST_PROTOCOL)
            self.transport.write(_HEADER.pack(len(data)) + data)
        self._out = []

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost()
