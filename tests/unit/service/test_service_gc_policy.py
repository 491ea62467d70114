"""service/gc_policy.py: what is alive once the store settles is frozen, and a later change re-settles."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator

import pytest

from service import gc_policy


class FakeStore:
    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []
        self.settled = False

    def notify(self) -> None:
        for listener in self.listeners:
            listener()


class Model:
    """Stands for an unloaded model's objects: a reference cycle, freed only by the cyclic collector."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_start_up_is_frozen_once_settled_and_an_unloaded_models_cycles_are_freed_at_the_next_settle() -> None:
    async def main() -> None:
        store = FakeStore()
        policy = gc_policy.install(store, True)
        assert policy is not None and gc.get_threshold()[0] >= gc_policy.GEN0_THRESHOLD
        store.notify()  # still loading: nothing frozen
        await asyncio.sleep(0)
        assert policy.settles == 0 and gc.get_freeze_count() == 0
        model = Model()
        gone = weakref.ref(model)
        store.settled = True
        store.notify(), store.notify(), store.notify()  # three changes told in one turn: one settle
        await asyncio.sleep(0)
        assert policy.settles == 1 and gc.get_freeze_count() > 1000
        del model  # unloaded: its cycle is garbage, but frozen, so no collection frees it...
        gc.collect()
        assert gone() is not None
        store.settled = False  # ...until the store settles after the change
        store.notify()
        await asyncio.sleep(0)
        assert policy.settles == 1 and gone() is not None
        store.settled = True
        store.notify()
        await asyncio.sleep(0)
        assert policy.settles == 2 and gone() is None

    asyncio.run(main())


def test_off_leaves_the_collector_as_it_was() -> None:
    store = FakeStore()
    threshold = gc.get_threshold()
    assert gc_policy.install(store, False) is None
    assert store.listeners == [] and gc.get_threshold() == threshold and gc.get_freeze_count() == 0
