"""Garbage collection in a serving process: what start-up left alive is frozen out of the collector's walks.

A server process holds a few hundred thousand long-lived objects (modules, FastAPI's routes, pydantic's
validators, the models' sessions and tables) and every request allocates a few dozen containers, so
CPython's generational collector runs a full collection every few thousand requests, and each one walks
every long-lived object again: CPU that requests pay for, and a pause of tens of milliseconds in the
latency tail. `gc.freeze()` moves the objects alive at that moment into a permanent generation that no
collection walks (the pattern CPython documents for long-lived servers). It is done once the process
serves, after a full collection so that start-up's garbage is freed rather than kept. Later collections
then walk only what requests create.

The youngest generation is collected after 10,000 net allocations instead of 700: a server with requests
in flight keeps hundreds of young containers alive, so at 700 it ran a young collection every few
dozen requests and promoted in-flight requests' objects to be walked again; garbage cycles wait a little
longer to be freed, which costs a few hundred kilobytes at most.

A model loaded or unloaded later changes what is long-lived: each time the store settles again (no model
loading or unloading), `settle` unfreezes, collects (an unloaded model's reference cycles are freed)
and freezes anew. Only the process entry points install this (`serve`, a front end, the engine). An app
built inside a test process is left alone, because freezing there would keep the tests' own garbage
alive. Setting: `gc_freeze` (VITSERVE_GC_FREEZE, on by default).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("vitserve.gc")

#: net allocations of container objects that trigger a young collection (CPython's default: 700)
GEN0_THRESHOLD = 10_000


class _Store(Protocol):
    listeners: list[Callable[[], None]]

    @property
    def settled(self) -> bool: ...


def settle(reason: str) -> int:
    """Unfreeze, collect, freeze what is alive now; returns the number of objects frozen."""
    start = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d objects frozen out of collections after %s (%d unreachable freed, %.0f ms)",
             frozen, reason, collected, (time.perf_counter() - start) * 1e3)
    return frozen


class GcPolicy:
    """Settles the collector whenever `store` settles (once per loop turn however many changes it reports)."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.settles = 0
        self._pending = False
        store.listeners.append(self._changed)

    def _changed(self) -> None:
        if not self._pending:  # looked at next turn: a change is often told before its lock is let go
            self._pending = True
            asyncio.get_running_loop().call_soon(self._settle)

    def _settle(self) -> None:
        self._pending = False
        if self.store.settled:  # not while a load or an unload is under way (its end tells again)
            self.settles += 1
            settle("start-up" if self.settles == 1 else "a change of the models served")


def install(store: _Store, enabled: bool) -> GcPolicy | None:
    """The policy for a process's store (and the young generation's threshold raised), or None (and a log
    line) when `enabled` is off."""
    if not enabled:
        log.info("start-up objects not frozen, thresholds left at %s (VITSERVE_GC_FREEZE=false)",
                 gc.get_threshold())
        return None
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, GEN0_THRESHOLD), *older)
    return GcPolicy(store)
