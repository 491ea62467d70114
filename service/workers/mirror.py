"""A front end's model store: the engine's models mirrored, every version's executor remote.

The front end runs the single-process app (every route, service/pipeline.py's request path) over a `ModelStore`
whose models mirror the engine's table, pushed on the connection that carries the answers, so a front end sees
a swap before the old version refuses a request. What only the engine knows (load/unload, statistics, the
metrics' gauges) is asked of it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.catalog import LoadedVersion, decode_config
from service.loader import ModelStore
from service.metrics import Metrics
from service.repository import ModelEntry
from service.runtimes import InferenceRuntime, RuntimeSpec
from service.settings import Settings
from service.stats import VersionCounts, VersionObserver
from service.workers.client import EngineClient, RemoteExecutor
from service.workers.protocol import ModelTable, VersionRow


class MirrorRuntime(InferenceRuntime):
    """A version's metadata (input shape, labels, preprocessing, provider); its session is in the engine."""

    def __init__(self, spec: RuntimeSpec, provider: str, provider_note: str | None) -> None:
        super().__init__(spec)
        self.provider = provider
        self.provider_note = provider_note

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        raise RuntimeError("a front end computes nothing: the engine runs the model")


class MirrorObserver(VersionObserver):
    """Records nothing: the engine keeps the version's statistics (it answers /v2/.../stats)."""

    def request_succeeded(self, total_s: float, queue_s: float, compute_s: float, count: int = 1) -> None: ...

    def request_failed(self, total_s: float, count: int = 1) -> None: ...


class MirrorStore(ModelStore):
    """`ModelStore` over the engine's models (never loads a runtime itself)."""

    def __init__(self, settings: Settings, metrics: Metrics, client: EngineClient) -> None:
        super().__init__(settings, metrics)
        self.client = client
        self._generations: dict[str, tuple[Any, ...]] = {}
        client.on_table = self.apply

    async def start(self, wait: bool = False) -> None:
        """Connect to the engine and mirror its table (the engine loads; nothing is polled here)."""
        await self.client.connect()
        self._started = True

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.client.close()

    def begin_drain(self) -> None:
        """Drain as the single-process server does, and tell the engine (whose gauges /metrics shows)."""
        first = not self._draining
        super().begin_drain()
        if first:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            loop.call_soon_threadsafe(self.client.readiness_off)

    @property
    def ready(self) -> bool:
        return super().ready and self.client.connected

    # what only the engine knows, asked of it (its model table arrives before the answer)
    async def load(self, name: str) -> None:
        await self.client.call("load", name)

    async def unload(self, name: str) -> None:
        await self.client.call("unload", name)

    async def statistics(self, name: str | None = None, version: int | None = None) -> list[VersionCounts]:
        counts: list[VersionCounts] = await self.client.call("statistics", name, version)
        return counts

    async def exposition(self) -> bytes:
        data: bytes = await self.client.call("exposition")
        return data

    def apply(self, table: ModelTable) -> None:
        """Take the engine's table; versions swapped there are swapped here, the old ones drained."""
        self._initial_done = table.initial_done
        for name, row in table.models.items():
            handle = self._handle_for(name)
            handle.state, handle.reason, handle.load_seconds = row.state, row.reason, row.load_seconds
            handle.entry = row.entry
            if self._generations.get(name) == row.generation:
                continue
            self._generations[name] = row.generation
            entry = row.entry
            old = list(handle.serve({} if entry is None else {
                v: self._mirror(entry, v, vr) for v, vr in row.versions.items()
            }).values())
            if old:  # requests holding an old version finish on it (the engine drains it too)
                task = asyncio.get_running_loop().create_task(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        self._notify()

    def _mirror(self, entry: ModelEntry, version: int, row: VersionRow) -> LoadedVersion:
        m = entry.manifest
        spec = RuntimeSpec(name=entry.name, version=version, manifest=m, max_batch_size=row.limits.max_batch_size,
                           config=entry.config)
        executor = RemoteExecutor(self.client, entry.name, version, row.limits, m.num_classes * 4)
        observer = MirrorObserver(self.metrics, entry.name, version, m.costs.flops)
        return LoadedVersion(entry.name, version, entry, MirrorRuntime(spec, row.provider, row.provider_note),
                             executor, observer, decode_config(m.preprocess), m.preprocess.value_range)
