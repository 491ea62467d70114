"""The catalog: the read side of the model store, what the pipeline sees.

Per model, its state (`loading`, `ready`, `failed` with reason, `unloading`, `unloaded`) and its serving
versions (`LoadedVersion`: runtime + executor + statistics), looked up by name; server readiness; the
intake accounting of the drain (a request accepted is answered, a new one is refused while draining);
the preprocessing thread pool. The loader (service/loader.py) writes it. It knows no HTTP, wire format
or runtime implementation: the wire shapes are built in service/api/ from the plain data it exposes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.batcher import Executor
from service.compute_gate import cpu_cores
from service.errors import ModelNotFound, ModelNotReady, ShuttingDown
from service.manifest import Evaluation, PreprocessConfig
from service.metrics import Metrics
from service.repository import ModelEntry, is_valid_model_name
from service.runtimes import InferenceRuntime
from service.settings import Settings
from service.stats import VersionCounts, VersionObserver

# the 503 of a request refused at intake during a drain (never the answer to a request already accepted)
INTAKE_CLOSED = "server is shutting down: request not accepted, retry elsewhere"
# set while a request the server has accepted is being served: a drain that begins meanwhile
# lets it finish (an accepted request is answered) instead of refusing it half way
_ACCEPTED: contextvars.ContextVar[bool] = contextvars.ContextVar("vitserve_accepted", default=False)


@dataclass
class LoadedVersion:
    """One serving model version: what a request resolves its model to, once, and carries along.

    `executor.submit(inputs, deadline) -> BatchOutput` (service/batcher.py: `Executor`) is the only way the
    pipeline runs a batch; the in-process batcher and a front end's remote executor both satisfy it."""

    model: str
    version: int
    entry: ModelEntry  # the repository entry it was loaded from (manifest, config.pbtxt)
    runtime: InferenceRuntime
    executor: Executor
    observer: VersionObserver
    preprocess: PreprocessConfig  # how its images are decoded (versions sharing it share a decode)
    value_range: tuple[float, float]  # inputs outside it are refused (the model's normalised pixel range)


@dataclass
class ModelHandle:
    """A model's state and its serving versions; `versions` is replaced as a whole on swap."""

    name: str
    state: str = "loading"
    reason: str | None = None
    entry: ModelEntry | None = None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    default: LoadedVersion | None = None  # the highest serving version, set with `versions`
    load_seconds: float | None = None
    fingerprint: tuple[Any, ...] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def serve(self, versions: dict[int, LoadedVersion]) -> dict[int, LoadedVersion]:
        """Swap in `versions` (atomically, for requests resolving now); return the old ones."""
        old = self.versions
        self.versions, self.default = versions, versions[max(versions)] if versions else None
        return old

    def not_ready(self) -> ModelNotReady:
        return ModelNotReady(f"model {self.name} is {self.state}" + (f": {self.reason}" if self.reason else ""))


def decode_config(preprocess: PreprocessConfig) -> PreprocessConfig:
    """The preprocessing that decoding uses (the accepted input range plays no part in it)."""
    return preprocess if preprocess.input_range is None else preprocess.model_copy(update={"input_range": None})


class Catalog:
    """The models the server knows, their serving versions, readiness and intake."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._models: dict[str, ModelHandle] = {}
        self._names: list[str] = []  # sorted, kept in step with _models
        self._valid_names: set[str] = set()  # the keys of _models that are valid model names
        self._started = False
        self._initial_done = False
        self._draining = False
        self._accepted = 0  # accepted requests not answered yet
        self._none_accepted = asyncio.Event()
        self._none_accepted.set()
        threads = settings.preprocess_threads or cpu_cores()
        self._preprocess_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vitserve-preprocess")
        #: called (on the loop) after a model's state or serving versions changed (service/workers mirrors them)
        self.listeners: list[Callable[[], None]] = []

    def _handle_for(self, name: str) -> ModelHandle:
        """The handle of `name`, created (and listed) on first sight."""
        handle = self._models.get(name)
        if handle is None:
            handle = self._models[name] = ModelHandle(name=name)
            bisect.insort(self._names, name)
            if is_valid_model_name(name):
                self._valid_names.add(name)
        return handle

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    # -- readiness ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Server ready: initial load done, not draining, at least one model serving."""
        return self._initial_done and not self._draining and any(h.state == "ready" for h in self._models.values())

    @property
    def settled(self) -> bool:
        """Initial load done, not draining, no model loading or unloading: what is alive now stays alive
        (service/gc_policy.py freezes it)."""
        return self._initial_done and not self._draining and not any(
            h.state in ("loading", "unloading") for h in self._models.values())

    @property
    def live(self) -> bool:
        return self._started

    # -- lookups -----------------------------------------------------------------------------
    def handle(self, name: str) -> ModelHandle:
        """The model's handle (read only: state, reason, entry, serving versions); ModelNotFound if unknown."""
        # the name pattern checked once per model (when its handle is made), not on every request
        handle = self._models.get(name) if name in self._valid_names else None
        if handle is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return handle

    def find(self, name: str) -> ModelHandle | None:
        """The handle of a model the catalog knows (whatever its name), None otherwise."""
        return self._models.get(name)

    def model_names(self) -> Sequence[str]:
        """Every model the store knows, sorted (kept sorted as models appear, not sorted per call; read only)."""
        return self._names

    def entry(self, name: str) -> ModelEntry:
        """The parsed repository entry of a loaded (or once loaded) model."""
        h = self.handle(name)
        if h.entry is None:
            raise h.not_ready()
        return h.entry

    def require(self, name: str) -> None:
        """ModelNotFound unless the store knows `name` (loaded or not)."""
        self.handle(name)

    def evaluation(self, name: str) -> Evaluation | None:
        """The model's held-out accuracy from its manifest (None when it never loaded or has none)."""
        h = self.handle(name)
        return h.entry.manifest.evaluation if h.entry is not None else None

    def ready_names(self) -> list[str]:
        """The models serving now, sorted."""
        return [n for n in self._names if self._models[n].state == "ready"]

    def is_model_ready(self, name: str, version: int | None = None) -> bool:
        h = self.handle(name)
        if h.state != "ready" or self._draining:
            return False
        return bool(h.versions) if version is None else version in h.versions

    def version(self, name: str, version: int | None = None) -> LoadedVersion:
        """The version a request runs on (the highest serving one unless named); ModelNotFound /
        ModelNotReady otherwise. The pipeline calls this once per request."""
        h = self.handle(name)
        lv = h.default
        if h.state != "ready" or lv is None:
            self.metrics.rejected.labels(model=name, reason="not_ready").inc()
            raise h.not_ready()
        if version is None:
            return lv
        found = h.versions.get(version)
        if found is None:
            if h.entry is not None and version in h.entry.versions:
                raise ModelNotReady(f"model {name} version {version} is not loaded")
            raise ModelNotFound(f"model {name} has no version {version}")
        return found

    async def exposition(self) -> bytes:
        """The metrics exposition (awaitable: a front end's store asks its engine)."""
        return self.metrics.render()

    async def statistics(self, name: str | None = None, version: int | None = None) -> list[VersionCounts]:
        """Plain statistics of every serving version (of one model, of one version); awaitable: a front end's
        store asks its engine."""
        names = [name] if name is not None else list(self._names)
        out = []
        for n in names:
            h = self.handle(n)
            if version is not None and version not in h.versions:
                raise ModelNotFound(f"model {n} version {version} is not loaded")
            for v, lv in sorted(h.versions.items()):
                if version is None or v == version:
                    out.append(lv.observer.snapshot())
        return out

    # -- intake ------------------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self._draining

    def check_intake(self) -> None:
        """503 for a new request while draining (a request accepted earlier goes on: see `accepting`)."""
        if self._draining and not _ACCEPTED.get():
            raise ShuttingDown(INTAKE_CLOSED)

    @contextmanager
    def accepting(self) -> Iterator[None]:
        """Mark a request accepted for its whole life: a drain begun meanwhile waits for it (up to the drain
        timeout) instead of refusing it after its body was read or its image decoded. 503 when draining."""
        if _ACCEPTED.get():
            yield
            return
        if self._draining:
            raise ShuttingDown(INTAKE_CLOSED)
        token = _ACCEPTED.set(True)
        self._accepted += 1
        self._none_accepted.clear()
        try:
            yield
        finally:
            _ACCEPTED.reset(token)
            self._accepted -= 1
            if self._accepted == 0:
                self._none_accepted.set()

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work (decoding an image, parsing a large body) in the worker pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._preprocess_pool, fn, *args)
