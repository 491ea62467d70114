"""The model store: loads the repository's models and keeps, per model, its state and serving versions.

It owns, per model, the loaded versions (runtime + executor + statistics) and the model's state
(`loading`, `ready`, `failed` with reason, `unloading`, `unloaded`). Loads run in the background
(runtime creation and warm-up in a worker thread) and are swapped in atomically: requests that
already hold the old version finish on it, the old batcher drains, then its runtime closes. A
model that fails to load is `failed` with its reason; the others serve. It also owns the drain
(readiness off, intake closed, accepted requests answered) and the worker thread pools.

The store knows nothing of HTTP, of a wire format or of a runtime implementation: runtimes come
from the runtimes table (service/runtimes) by each model's config.pbtxt `backend`/`platform`, with
options the table's entry builds and the store passes on unread. The request path lives in
service/pipeline.py.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.batcher import Batcher
from service.compute_gate import ComputeGate, cpu_cores
from service.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
    exception_summary,
)
from service.loader import batch_limits, build_version, directory_fingerprint, instance_count
from service.manifest import Evaluation, PreprocessConfig
from service.metrics import Metrics
from service.repository import ModelEntry, ModelLoadError, is_valid_model_name, list_model_names, read_model
from service.runtimes import InferenceRuntime, import_runtime_modules, runtime_backend
from service.schemas import BatchingInfo, ModelInfo
from service.settings import Settings
from service.stats import VersionCounts, VersionObserver

log = logging.getLogger("vitserve.store")

# the 503 of a request refused at intake during a drain (never the answer to a request already accepted)
INTAKE_CLOSED = "server is shutting down: request not accepted, retry elsewhere"
# set while a request the server has accepted is being served: a drain that begins meanwhile
# lets it finish (an accepted request is answered) instead of refusing it half way
_ACCEPTED: contextvars.ContextVar[bool] = contextvars.ContextVar("vitserve_accepted", default=False)


@dataclass
class LoadedVersion:
    """One serving model version: what a request resolves its model to, once, and carries along.

    `executor.submit(inputs, deadline) -> BatchOutput` (service/batcher.py) is the only way the pipeline
    runs a batch; a multi-process front end can put a remote executor with the same `submit` signature
    (and `limits`, `is_overloaded`, `retry_after_s`) here without the pipeline changing."""

    model: str
    version: int
    entry: ModelEntry  # the repository entry it was loaded from (manifest, config.pbtxt)
    runtime: InferenceRuntime
    executor: Batcher
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


def _decode_config(preprocess: PreprocessConfig) -> PreprocessConfig:
    """The preprocessing that decoding uses (the accepted input range plays no part in it)."""
    return preprocess if preprocess.input_range is None else preprocess.model_copy(update={"input_range": None})


class ModelStore:
    """Loads the repository's models and serves their versions to the pipeline."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._models: dict[str, ModelHandle] = {}
        self._names: list[str] = []  # sorted, kept in step with _models
        self._valid_names: set[str] = set()  # the keys of _models that are valid model names
        self._started = False
        self._initial_done = False
        self._draining = False
        self._options: dict[str, object] = {}  # per runtimes-table key: its options (opaque here)
        self._concurrent_sessions = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()
        self._drain_task: asyncio.Task[int] | None = None
        self._accepted = 0  # accepted requests not answered yet
        self._none_accepted = asyncio.Event()
        self._none_accepted.set()
        self._stop_loads = threading.Event()  # set at shutdown: loads in progress stop between warm-up sizes
        cores = cpu_cores()
        threads = settings.preprocess_threads or cores
        self._preprocess_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vitserve-preprocess")
        # models load side by side (session creation is mostly one thread); their warm-ups share the gate
        self._load_pool = ThreadPoolExecutor(max_workers=settings.load_concurrency or cores,
                                             thread_name_prefix="vitserve-load")
        self.compute_gate = ComputeGate(settings.compute_threads or cores)
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

    # -- life cycle --------------------------------------------------------------------------
    async def start(self, wait: bool = False) -> None:
        """Find the models to serve and start loading them in the background (all of them if `wait`)."""
        import_runtime_modules(self.settings.runtime_modules)  # the plugin hook (service/runtimes/table.py)
        root = self.settings.repository
        names = self.settings.models if self.settings.models is not None else list_model_names(root)
        self._concurrent_sessions = max(1, len(names))
        for name in names:
            self._handle_for(name)
            self.metrics.set_state(name, "loading")
        self._started = True
        initial = self._spawn(self._initial_load(names))
        if self.settings.poll_interval_s > 0:
            self._spawn(self._poll())
        if wait:
            await asyncio.shield(initial)

    async def _initial_load(self, names: list[str]) -> None:
        """Every model at once, bounded by the load pool; each serves as soon as it is ready."""
        await asyncio.gather(*(self._load(self._models[name]) for name in names))
        self._initial_done = True
        self.metrics.server_ready.set(1.0 if self.ready else 0.0)
        self._notify()
        log.info("initial load done: %s", {n: h.state for n, h in self._models.items()})

    def begin_drain(self) -> None:
        """Readiness false at once (load balancers stop sending), intake stops and the batchers start
        draining now, so what is left at the drain timeout gets a clean 503 (not a cancelled connection).

        Safe to call from a signal handler (it only schedules the drain on the loop)."""
        self._stop_loads.set()
        if self._draining:
            return
        self._draining = True
        self.metrics.server_ready.set(0.0)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_batchers())

    async def _drain_batchers(self) -> int:
        """Accepted requests finish for up to drain_timeout_s; what is left then fails with 503."""
        started = time.monotonic()
        if self._accepted:
            # requests accepted before the signal (reading their body, decoding) still reach their batcher
            try:
                await asyncio.wait_for(self._none_accepted.wait(), self.settings.drain_timeout_s)
            except TimeoutError:
                log.warning("drain timeout: %d accepted requests still being read or decoded", self._accepted)
        left = max(0.0, self.settings.drain_timeout_s - (time.monotonic() - started))
        versions = [lv for h in self._models.values() for lv in h.versions.values()]
        stops = [lv.executor.stop(left) for lv in versions]
        # versions swapped out just before (still retiring) finish their requests in the same window
        results = await asyncio.gather(*stops, *list(self._retiring), return_exceptions=True)
        failed = sum(r for r in results[: len(stops)] if isinstance(r, int))
        if failed:
            log.warning("drain timeout: %d accepted requests failed", failed)
        return failed

    async def drained(self) -> None:
        """Wait until the drain begun by begin_drain() is over (accepted requests answered or timed out)."""
        while self._draining and self._drain_task is None:
            await asyncio.sleep(0.01)  # begin_drain() from a signal handler schedules the task on the loop
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def shutdown(self) -> None:
        """Stop intake, drain every batcher up to the drain timeout, close the sessions."""
        self.begin_drain()
        for task in list(self._tasks):
            task.cancel()
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_batchers())
        await self._drain_task
        versions = [lv for h in self._models.values() for lv in h.versions.values()]
        for lv in versions:
            lv.runtime.close()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)

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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- loading -----------------------------------------------------------------------------
    def _build_version(self, entry: ModelEntry, version: int) -> InferenceRuntime:
        """Blocking (load thread): the runtime the model's config.pbtxt asks for, warmed up."""
        key = entry.config.runtime_key
        try:
            backend = runtime_backend(key)
        except LookupError as exc:
            raise ModelLoadError(entry.name, str(exc)) from None
        if key not in self._options:  # built once per store, from the settings and how many models share it
            self._options[key] = backend.options(self.settings, self._concurrent_sessions)
        return build_version(entry, version, self.settings, backend, self._options[key], stop=self._stop_loads,
                             gate=self.compute_gate)

    async def _load(self, handle: ModelHandle, only_if_changed: bool = False) -> None:
        async with handle.lock:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            serving_before = bool(handle.versions)
            if not serving_before:
                handle.state, handle.reason = "loading", None
                self.metrics.set_state(handle.name, "loading")
                self._notify()
            handle.fingerprint = directory_fingerprint(self.settings.repository, handle.name)
            try:
                entry = await loop.run_in_executor(self._load_pool, read_model, self.settings.repository, handle.name)
                wanted = entry.served_versions()
                if only_if_changed and sorted(wanted) == sorted(handle.versions):
                    return
                runtimes: dict[int, InferenceRuntime] = {}
                try:
                    for version in wanted:
                        runtimes[version] = await loop.run_in_executor(
                            self._load_pool, self._build_version, entry, version
                        )
                except BaseException:
                    for rt in runtimes.values():
                        rt.close()
                    raise
            except ModelLoadError as exc:
                self._load_failed(handle, exc.reason, serving_before)
                return
            except Exception as exc:  # noqa: BLE001 - one model's unexpected error fails that model only
                log.exception("model %s: unexpected load error", handle.name)
                self._load_failed(handle, f"unexpected load error: {exception_summary(exc)}", serving_before)
                return
            limits = batch_limits(entry, self.settings)
            preprocess = entry.manifest.preprocess
            new_versions: dict[int, LoadedVersion] = {}
            for version, runtime in runtimes.items():
                observer = VersionObserver(self.metrics, entry.name, version, entry.manifest.costs.flops)
                batcher = Batcher(runtime.run, limits, name=f"{entry.name}:{version}", hooks=observer,
                                  instances=instance_count(entry, self.settings),
                                  gate=self.compute_gate.for_runtime(runtime.cpu_threads))
                batcher.start()
                new_versions[version] = LoadedVersion(entry.name, version, entry, runtime, batcher, observer,
                                                      _decode_config(preprocess), preprocess.value_range)
            handle.entry = entry
            old = handle.serve(new_versions)  # the atomic swap
            handle.state, handle.reason = "ready", None
            handle.load_seconds = time.perf_counter() - started
            self._publish(handle, old)
            log.info("model %s ready: versions %s on %s in %.2fs", entry.name, sorted(new_versions),
                     handle.default.runtime.provider if handle.default else "?", handle.load_seconds)
            if old:
                task = asyncio.get_running_loop().create_task(self._retire(list(old.values())))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _load_failed(self, handle: ModelHandle, reason: str, keep_serving: bool) -> None:
        reason = reason.replace(str(self.settings.repository), "<repository>")
        log.error("model %s failed to load: %s", handle.name, reason)
        if keep_serving:
            handle.reason = f"reload failed, previous version serves: {reason}"
            return
        handle.state, handle.reason = "failed", reason
        self.metrics.set_state(handle.name, "failed")
        self._notify()

    def _publish(self, handle: ModelHandle, old: dict[int, LoadedVersion]) -> None:
        m, entry = self.metrics, handle.entry
        for lv in old.values():
            m.model_ready.labels(model=handle.name, version=str(lv.version), provider=lv.runtime.provider).set(0)
        for lv in handle.versions.values():
            m.init_version(handle.name, str(lv.version), lv.executor.limits.max_queue_size)
            m.model_ready.labels(model=handle.name, version=str(lv.version), provider=lv.runtime.provider).set(1)
        m.set_state(handle.name, handle.state)
        if entry is not None:
            m.model_flops.labels(model=handle.name).set(entry.manifest.costs.flops)
            m.model_parameters.labels(model=handle.name).set(entry.manifest.costs.parameters)
            m.set_accuracy(handle.name, entry.manifest.evaluation)
        if handle.load_seconds is not None:
            m.model_load_seconds.labels(model=handle.name).set(handle.load_seconds)
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    async def _retire(self, versions: list[LoadedVersion]) -> None:
        """Drain old versions (requests that hold them finish), then close their sessions."""
        await asyncio.gather(*(lv.executor.stop(self.settings.drain_timeout_s) for lv in versions))
        for lv in versions:
            lv.runtime.close()

    async def _poll(self) -> None:
        """Triton's poll mode: new version directories (and new models) are loaded in the background."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            if self._draining:
                return
            names = list(self._models)
            if self.settings.models is None:
                names += [n for n in list_model_names(self.settings.repository) if n not in self._models]
            for name in names:
                handle = self._handle_for(name)
                if handle.state in ("unloading", "unloaded") or handle.lock.locked():
                    continue
                if handle.state == "failed" and handle.fingerprint == directory_fingerprint(
                    self.settings.repository, name
                ):
                    continue  # nothing changed since it failed: do not retry (and log) every interval
                await self._load(handle, only_if_changed=handle.state == "ready")

    async def load(self, name: str) -> ModelInfo:
        """Load (or reload) a model: warm up in the background, swap atomically, return its info."""
        if not is_valid_model_name(name):
            raise InvalidInput(f"invalid model name {name!r}")
        if self._draining:
            raise ShuttingDown("server is shutting down")
        if name not in self._models and not (self.settings.repository / name).is_dir():
            raise ModelNotFound(f"no model {name!r} in the repository")
        handle = self._handle_for(name)
        await self._load(handle)
        if handle.state == "failed" or (handle.reason or "").startswith("reload failed"):
            # like Triton: a failed load is an error even when the previous version keeps serving
            raise InvalidInput(f"failed to load {name}: {handle.reason}")
        return self.get_model(name)

    async def unload(self, name: str) -> ModelInfo:
        """Stop routing to the model, let its accepted requests finish, close its sessions."""
        handle = self._handle(name)
        async with handle.lock:
            old = handle.serve({})
            handle.state, handle.reason = "unloading", None
            self.metrics.set_state(name, "unloading")
            self._notify()
            for lv in old.values():
                labels = {"model": name, "version": str(lv.version), "provider": lv.runtime.provider}
                self.metrics.model_ready.labels(**labels).set(0)
            await self._retire(list(old.values()))
            handle.state, handle.reason = "unloaded", "unloaded by request"
            self.metrics.set_state(name, "unloaded")
            self._notify()
        return self.get_model(name)

    # -- queries -----------------------------------------------------------------------------
    def _handle(self, name: str) -> ModelHandle:
        # the name pattern checked once per model (when its handle is made), not on every request
        handle = self._models.get(name) if name in self._valid_names else None
        if handle is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return handle

    def model_names(self) -> Sequence[str]:
        """Every model the store knows, sorted (kept sorted as models appear, not sorted per call; read only)."""
        return self._names

    def get_model(self, name: str) -> ModelInfo:
        h = self._handle(name)
        entry, default = h.entry, h.default
        info = ModelInfo(name=name, state=h.state, reason=h.reason, load_seconds=h.load_seconds)
        if entry is not None:
            m = entry.manifest
            limits = batch_limits(entry, self.settings)
            db = entry.config.dynamic_batching
            info = info.model_copy(
                update={
                    "available_versions": sorted(entry.versions),
                    "preset": m.preset,
                    "variants": list(m.variants),
                    "spec": m.spec,
                    "flops": m.costs.flops,
                    "parameters": m.costs.parameters,
                    "num_classes": m.num_classes,
                    "input_size": list(m.preprocess.input_size),
                    "evaluation": m.evaluation,
                    "batching": BatchingInfo(
                        max_batch_size=limits.max_batch_size,
                        max_queue_delay_ms=limits.max_queue_delay_s * 1000,
                        max_queue_size=limits.max_queue_size,
                        preferred_batch_sizes=list(db.preferred_batch_size) if db else [],
                        instances=instance_count(entry, self.settings),
                    ),
                }
            )
        if default is not None:
            info = info.model_copy(
                update={"version": default.version, "versions": sorted(h.versions),
                        "provider": default.runtime.provider, "provider_note": default.runtime.provider_note,
                        "last_error": default.observer.last_error}
            )
        return info

    def list_models(self) -> list[ModelInfo]:
        return [self.get_model(n) for n in self.model_names()]

    def entry(self, name: str) -> ModelEntry:
        """The parsed repository entry of a loaded (or once loaded) model."""
        h = self._handle(name)
        if h.entry is None:
            raise h.not_ready()
        return h.entry

    def require(self, name: str) -> None:
        """ModelNotFound unless the store knows `name` (loaded or not)."""
        self._handle(name)

    def evaluation(self, name: str) -> Evaluation | None:
        """The model's held-out accuracy from its manifest (None when it never loaded or has none)."""
        h = self._handle(name)
        return h.entry.manifest.evaluation if h.entry is not None else None

    def ready_names(self) -> list[str]:
        """The models serving now, sorted."""
        return [n for n in self._names if self._models[n].state == "ready"]

    def is_model_ready(self, name: str, version: int | None = None) -> bool:
        h = self._handle(name)
        if h.state != "ready" or self._draining:
            return False
        return bool(h.versions) if version is None else version in h.versions

    def version(self, name: str, version: int | None = None) -> LoadedVersion:
        """The version a request runs on (the highest serving one unless named); ModelNotFound /
        ModelNotReady otherwise. The pipeline calls this once per request."""
        h = self._handle(name)
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

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model directory, loaded or not."""
        names = set(self._models) | set(list_model_names(self.settings.repository))
        out = []
        for name in sorted(names):
            h = self._models.get(name)
            state = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}.get(
                h.state if h else "", "UNAVAILABLE"
            )
            version = str(h.default.version) if h and h.default else ""
            reason = (h.reason or "") if h else "not loaded"
            out.append({"name": name, "version": version, "state": state, "reason": reason})
        return out

    def statistics(self, name: str | None = None, version: int | None = None) -> list[VersionCounts]:
        """Plain statistics of every serving version (of one model, of one version)."""
        names = [name] if name is not None else list(self._names)
        out = []
        for n in names:
            h = self._handle(n)
            if version is not None and version not in h.versions:
                raise ModelNotFound(f"model {n} version {version} is not loaded")
            for v, lv in sorted(h.versions.items()):
                if version is None or v == version:
                    out.append(lv.observer.snapshot())
        return out
