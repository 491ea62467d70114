"""The model registry: the one serving core every router calls (after KServe's DataPlane).

It owns, per model, the loaded versions (runtime + batcher + statistics) and the model's state
(`loading`, `ready`, `failed` with reason, `unloading`, `unloaded`). Loads run in the background
(session creation and warm-up in a worker thread) and are swapped in atomically: requests that
already hold the old version finish on it, the old batcher drains, then its session closes. A
model that fails to load is `failed` with its reason; the others serve.

Public coroutine API: `infer`, `classify`, `compare`, `load`, `unload`, `shutdown`; synchronous
queries: `list_models`, `get_model`, `is_model_ready`, `ready`, `repository_index`, `statistics`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.batcher import Batcher, BatcherStopped, BatchLimits
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NonFiniteOutput,
    Overloaded,
    ServiceError,
    ShuttingDown,
)
from service.loader import (
    RuntimeFactory,
    batch_limits,
    build_version,
    directory_fingerprint,
    first_line,
    instance_count,
    instance_session,
)
from service.manifest import PreprocessConfig
from service.metrics import Metrics
from service.preprocess import preprocess_image
from service.repository import (
    ModelEntry,
    ModelLoadError,
    is_valid_model_name,
    list_model_names,
    read_model,
)
from service.runtime import InferenceRuntime, SessionConfig, onnx_runtime_factory, session_config, top_k_predictions
from service.schemas import BatchingInfo, ClassifyResult, ModelInfo, Timings
from service.settings import Settings
from service.stats import VersionObserver
from service.v2_meta import ModelStatistics

log = logging.getLogger("vitserve.registry")

# the 503 of a request refused at intake during a drain (never the answer to a request already accepted)
INTAKE_CLOSED = "server is shutting down: request not accepted, retry elsewhere"
# set while a request the server has accepted is being served: a drain that begins meanwhile
# lets it finish (an accepted request is answered) instead of refusing it half way
#: input tensors larger than this are checked (finite, in range) in the worker pool, not on the event loop
LARGE_CHECK_BYTES = 1 << 20
_ACCEPTED: contextvars.ContextVar[bool] = contextvars.ContextVar("vitserve_accepted", default=False)


@dataclass
class LoadedVersion:
    """One serving model version."""

    version: int
    runtime: InferenceRuntime
    batcher: Batcher
    observer: VersionObserver


@dataclass
class ModelHandle:
    """A model's state and its serving versions; `versions` is replaced as a whole on swap."""

    name: str
    state: str = "loading"
    reason: str | None = None
    entry: ModelEntry | None = None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    load_seconds: float | None = None
    fingerprint: tuple[Any, ...] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def default(self) -> LoadedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


@dataclass(frozen=True)
class InferOutput:
    """Logits of one request and how it got them."""

    model: str
    version: int
    outputs: np.ndarray
    queue_s: float
    compute_s: float
    batch_size: int
    total_s: float


class ModelRegistry:
    """Loads the repository's models and serves them through per-version batchers."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        runtime_factory: RuntimeFactory = onnx_runtime_factory,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._factory = runtime_factory
        self._models: dict[str, ModelHandle] = {}
        self._started = False
        self._initial_done = False
        self._draining = False
        self._session: SessionConfig | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()
        self._drain_task: asyncio.Task[int] | None = None
        self._accepted = 0  # accepted requests not answered yet
        self._none_accepted = asyncio.Event()
        self._none_accepted.set()
        self._stop_loads = threading.Event()  # set at shutdown: loads in progress stop between warm-up sizes
        threads = settings.preprocess_threads or os.cpu_count() or 1
        self._preprocess_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vitserve-preprocess")
        self._load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitserve-load")
        #: called (on the loop) after a model's state or serving versions changed (service/workers mirrors them)
        self.listeners: list[Callable[[], None]] = []

    # -- life cycle --------------------------------------------------------------------------
    async def start(self, wait: bool = False) -> None:
        """Find the models to serve and start loading them in the background (all of them if `wait`)."""
        root = self.settings.repository
        names = self.settings.models if self.settings.models is not None else list_model_names(root)
        self._session = session_config(
            self.settings.providers,
            self.settings.intra_op_threads,
            self.settings.inter_op_threads,
            self.settings.allow_spinning,
            self.settings.graph_optimization_level,
            concurrent_sessions=max(1, len(names)),
            engine_cache_dir=self.settings.trt_engine_cache_dir,
        )
        for name in names:
            self._models[name] = ModelHandle(name=name)
            self.metrics.set_state(name, "loading")
        self._started = True
        initial = self._spawn(self._initial_load(names))
        if self.settings.poll_interval_s > 0:
            self._spawn(self._poll())
        if wait:
            await asyncio.shield(initial)

    async def _initial_load(self, names: list[str]) -> None:
        for name in names:
            await self._load(self._models[name])
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
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("drain timeout: %d accepted requests still being read or decoded", self._accepted)
        left = max(0.0, self.settings.drain_timeout_s - (time.monotonic() - started))
        versions = [lv for h in self._models.values() for lv in h.versions.values()]
        stops = [lv.batcher.stop(left) for lv in versions]
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
    def live(self) -> bool:
        return self._started

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- loading -----------------------------------------------------------------------------
    def _limits(self, entry: ModelEntry) -> BatchLimits:
        return batch_limits(entry, self.settings)

    def _build_version(self, entry: ModelEntry, version: int) -> InferenceRuntime:
        session = instance_session(self._session or SessionConfig(), instance_count(entry, self.settings),
                                   self.settings)
        return build_version(entry, version, self.settings, session, self._factory, stop=self._stop_loads)

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
            except Exception as exc:  # noqa: BLE001
                log.exception("model %s: unexpected load error", handle.name)
                self._load_failed(handle, f"unexpected load error: {first_line(exc)}", serving_before)
                return
            limits = self._limits(entry)
            new_versions: dict[int, LoadedVersion] = {}
            for version, runtime in runtimes.items():
                observer = VersionObserver(self.metrics, entry.name, version, entry.manifest.costs.flops)
                batcher = Batcher(runtime.run, limits, name=f"{entry.name}:{version}", hooks=observer,
                                  instances=instance_count(entry, self.settings))
                batcher.start()
                new_versions[version] = LoadedVersion(version, runtime, batcher, observer)
            old = handle.versions
            handle.entry, handle.versions = entry, new_versions  # the atomic swap
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
            m.init_version(handle.name, str(lv.version), lv.batcher.limits.max_queue_size)
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
        await asyncio.gather(*(lv.batcher.stop(self.settings.drain_timeout_s) for lv in versions))
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
                handle = self._models.setdefault(name, ModelHandle(name=name))
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
        handle = self._models.setdefault(name, ModelHandle(name=name))
        await self._load(handle)
        if handle.state == "failed" or (handle.reason or "").startswith("reload failed"):
            # like Triton: a failed load is an error even when the previous version keeps serving
            raise InvalidInput(f"failed to load {name}: {handle.reason}")
        return self.get_model(name)

    async def unload(self, name: str) -> ModelInfo:
        """Stop routing to the model, let its accepted requests finish, close its sessions."""
        handle = self._handle(name)
        async with handle.lock:
            old = handle.versions
            handle.versions, handle.state, handle.reason = {}, "unloading", None
            self.metrics.set_state(name, "unloading")
            self._notify()
            for lv in old.values():
                self.metrics.model_ready.labels(model=name, version=str(lv.version), provider=lv.runtime.provider).set(0)
            await self._retire(list(old.values()))
            handle.state, handle.reason = "unloaded", "unloaded by request"
            self.metrics.set_state(name, "unloaded")
            self._notify()
        return self.get_model(name)

    # -- queries -----------------------------------------------------------------------------
    def _handle(self, name: str) -> ModelHandle:
        handle = self._models.get(name) if is_valid_model_name(name) else None
        if handle is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return handle

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def get_model(self, name: str) -> ModelInfo:
        h = self._handle(name)
        entry, default = h.entry, h.default
        info = ModelInfo(name=name, state=h.state, reason=h.reason, load_seconds=h.load_seconds)  # type: ignore[arg-type]
        if entry is not None:
            m = entry.manifest
            limits = self._limits(entry)
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
                update={"version": default.version, "versions": sorted(h.versions), "provider": default.runtime.provider,
                        "provider_note": default.runtime.provider_note, "last_error": default.observer.last_error}
            )
        return info

    def list_models(self) -> list[ModelInfo]:
        return [self.get_model(n) for n in self.model_names()]

    def entry(self, name: str) -> ModelEntry:
        """The parsed repository entry of a loaded (or once loaded) model."""
        h = self._handle(name)
        if h.entry is None:
            raise ModelNotReady(f"model {name} is {h.state}" + (f": {h.reason}" if h.reason else ""))
        return h.entry

    def is_model_ready(self, name: str, version: int | None = None) -> bool:
        h = self._handle(name)
        if h.state != "ready" or self._draining:
            return False
        return bool(h.versions) if version is None else version in h.versions

    def serving(self, name: str, version: int | None = None) -> LoadedVersion:
        """The version a request should run on; ModelNotFound / ModelNotReady otherwise."""
        h = self._handle(name)
        if h.state != "ready" or not h.versions:
            self.metrics.rejected.labels(model=name, reason="not_ready").inc()
            raise ModelNotReady(f"model {name} is {h.state}" + (f": {h.reason}" if h.reason else ""))
        if version is None:
            return h.versions[max(h.versions)]
        lv = h.versions.get(version)
        if lv is None:
            if h.entry is not None and version in h.entry.versions:
                raise ModelNotReady(f"model {name} version {version} is not loaded")
            raise ModelNotFound(f"model {name} has no version {version}")
        return lv

    def admit(self, name: str, version: int | None = None, images: int = 1) -> LoadedVersion:
        """Cheap early check before reading or decoding a body: known, ready, and room in the queue."""
        if self._draining and not _ACCEPTED.get():
            raise ShuttingDown(INTAKE_CLOSED)
        lv = self.serving(name, version)
        if lv.batcher.is_overloaded(images):
            lv.observer.on_rejected(images)
            raise Overloaded(f"model {name} queue is full", retry_after_s=lv.batcher.retry_after_s())
        return lv

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

    @contextmanager
    def accept(self, name: str, version: int | None = None, images: int = 1) -> Iterator[LoadedVersion]:
        """`admit`, then hold the request as accepted (see `accepting`) until the block ends."""
        lv = self.admit(name, version, images)
        with self.accepting():
            yield lv

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work (decoding a large body) in the worker pool, off the event loop."""
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

    def statistics(self, name: str | None = None, version: int | None = None) -> list[ModelStatistics]:
        names = [name] if name is not None else self.model_names()
        out = []
        for n in names:
            h = self._handle(n)
            if version is not None and version not in h.versions:
                raise ModelNotFound(f"model {n} version {version} is not loaded")
            for v, lv in sorted(h.versions.items()):
                if version is None or v == version:
                    out.append(lv.observer.snapshot())
        return out

    # -- inference ---------------------------------------------------------------------------
    def deadline(self, deadline_ms: float | None, start: float | None = None) -> float:
        """Absolute deadline (monotonic clock): the request's own, capped by the settings default."""
        if deadline_ms is not None and deadline_ms <= 0:
            raise InvalidInput(f"deadline_ms must be positive, got {deadline_ms}")
        limit = self.settings.default_deadline_ms
        ms = limit if deadline_ms is None else min(deadline_ms, limit)
        return (start if start is not None else time.monotonic()) + ms / 1000

    def _check_inputs(self, lv: LoadedVersion, inputs: np.ndarray) -> None:
        expected = tuple(lv.runtime.input_shape)
        if not isinstance(inputs, np.ndarray) or inputs.dtype != np.float32:
            raise InvalidInput(f"input must be FP32, got {getattr(inputs, 'dtype', type(inputs).__name__)}")
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != expected:
            raise InvalidInput(f"input shape must be [n, {', '.join(map(str, expected))}], got {list(inputs.shape)}")
        limit = min(self.settings.max_images_per_request, lv.batcher.limits.max_batch_size)
        if not 1 <= inputs.shape[0] <= limit:
            raise InvalidInput(f"a request carries 1..{limit} images, got {inputs.shape[0]}")
        # min/max propagate NaN and keep +-inf: two passes check finiteness and the range together
        smallest, largest = float(inputs.min()), float(inputs.max())
        if not (math.isfinite(smallest) and math.isfinite(largest)):
            raise InvalidInput("input contains NaN or infinity")
        # an extreme (finite) value would skew the per-batch activation quantisation of int8 models and turn
        # the other requests of its batch into NaN: only values the model's preprocessing can produce, widened
        lo, hi = lv.runtime.spec.manifest.preprocess.value_range
        if smallest < lo or largest > hi:
            raise InvalidInput(
                f"input values must lie in [{lo:g}, {hi:g}] (the model's normalised pixel range with a margin), "
                f"got [{smallest:g}, {largest:g}]"
            )

    async def infer(
        self, name: str, inputs: np.ndarray, version: int | None = None, deadline: float | None = None
    ) -> InferOutput:
        """Run `inputs` float32 [n, 3, H, W] through the model's batcher; `deadline` is absolute monotonic."""
        start = time.monotonic()
        if self._draining and not _ACCEPTED.get():
            raise ShuttingDown(INTAKE_CLOSED)
        deadline = deadline if deadline is not None else self.deadline(None, start)
        lv = self.serving(name, version)
        if inputs.nbytes > LARGE_CHECK_BYTES:  # a large batch's scan would hold up every other connection
            await self.run_blocking(self._check_inputs, lv, inputs)
        else:
            self._check_inputs(lv, inputs)
        for attempt in range(3):
            try:
                out = await lv.batcher.submit(inputs, deadline)
                break
            except BatcherStopped:
                if version is not None or attempt == 2 or self._draining:
                    raise
                lv = self.serving(name)  # swapped while we looked: use the new version
            except ServiceError:
                lv.observer.request_failed(time.monotonic() - start)
                raise
        if not np.isfinite(out.outputs).all():
            # never a `null` score: this request fails, the others of its batch are answered
            self.metrics.nonfinite_outputs.labels(model=name).inc()
            lv.observer.request_failed(time.monotonic() - start)
            raise NonFiniteOutput(f"model {name} computed a non-finite output for this request")
        total = time.monotonic() - start
        lv.observer.request_succeeded(total, out.queue_s, out.compute_s)
        return InferOutput(name, lv.version, out.outputs, out.queue_s, out.compute_s, out.batch_size, total)

    async def classify(
        self,
        name: str,
        image: bytes,
        top_k: int = 5,
        version: int | None = None,
        deadline_ms: float | None = None,
        admitted: LoadedVersion | None = None,
    ) -> ClassifyResult:
        """Image bytes -> top-k predictions with queue / preprocess / compute / total timings.

        `admitted`: the version a caller already accepted the request for (`accept`), so a request
        admitted before its body was read is not checked against the queue a second time."""
        start = time.monotonic()
        self._check_top_k(top_k)
        deadline = self.deadline(deadline_ms, start)
        # refuse before spending a decode on it (unless the caller already admitted it)
        with self.accept(name, version) if admitted is None else nullcontext(admitted) as lv:
            pixels, preprocess_s = await self._decode(image, _preprocess_of(lv))
            self.metrics.preprocess_duration.labels(model=name).observe(preprocess_s)
            return await self._classify_pixels(name, lv, pixels, preprocess_s, top_k, version, deadline, start)

    def _check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= self.settings.max_top_k:
            raise InvalidInput(f"top_k must be in 1..{self.settings.max_top_k}, got {top_k}")

    async def _decode(self, image: bytes, cfg: PreprocessConfig) -> tuple[np.ndarray, float]:
        """Decode and transform in the preprocessing pool: (pixels [3, H, W], seconds)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        pixels = await loop.run_in_executor(
            self._preprocess_pool, preprocess_image, image, cfg, self.settings.max_image_pixels,
            self.settings.max_image_bytes,
        )
        return pixels, time.perf_counter() - t0

    async def _classify_pixels(
        self, name: str, lv: LoadedVersion, pixels: np.ndarray, preprocess_s: float, top_k: int,
        version: int | None, deadline: float, start: float,
    ) -> ClassifyResult:
        if time.monotonic() >= deadline:
            lv.observer.on_expired(1)
            raise DeadlineExceeded("deadline passed during preprocessing")
        out = await self.infer(name, pixels[None], version=version, deadline=deadline)
        if out.version == lv.version:
            predictions = lv.runtime.postprocess(out.outputs, top_k)[0]
        else:  # swapped to a new version while queued: its manifest's labels
            predictions = top_k_predictions(out.outputs, top_k, self.entry(name).manifest.labels)[0]
        total = time.monotonic() - start
        return ClassifyResult(
            model=name,
            version=out.version,
            predictions=predictions,
            timings=Timings(
                queue_ms=out.queue_s * 1000,
                preprocess_ms=preprocess_s * 1000,
                compute_ms=out.compute_s * 1000,
                total_ms=total * 1000,
                batch_size=out.batch_size,
            ),
        )

    async def compare(
        self, image: bytes, names: list[str] | None, top_k: int = 5, deadline_ms: float | None = None
    ) -> list[tuple[str, ClassifyResult | ServiceError]]:
        """One image through several models at once (all ready models when `names` is None).

        Each model is admitted first (a queue slot each; a full one fails only that model's part), then
        the image is decoded once per distinct preprocessing, not once per model."""
        start = time.monotonic()
        if names is None:
            names = [n for n in self.model_names() if self._models[n].state == "ready"]
        if not names:
            raise ModelNotReady("no model is ready")
        for n in names:
            self._handle(n)
        self._check_top_k(top_k)
        deadline = self.deadline(deadline_ms, start)
        with self.accepting():
            results: dict[str, ClassifyResult | ServiceError] = {}
            groups: dict[PreprocessConfig, list[tuple[str, LoadedVersion]]] = {}
            for n in names:
                try:
                    lv = self.admit(n)
                except ServiceError as exc:
                    results[n] = exc
                    continue
                groups.setdefault(_preprocess_of(lv), []).append((n, lv))

            async def run_group(cfg: PreprocessConfig, members: list[tuple[str, LoadedVersion]]) -> None:
                try:
                    pixels, preprocess_s = await self._decode(image, cfg)
                except ServiceError as exc:
                    results.update((n, exc) for n, _ in members)
                    return
                for n, _ in members:
                    self.metrics.preprocess_duration.labels(model=n).observe(preprocess_s)
                done = await asyncio.gather(
                    *(self._classify_pixels(n, lv, pixels, preprocess_s, top_k, None, deadline, start)
                      for n, lv in members),
                    return_exceptions=True,
                )
                for (n, _), r in zip(members, done):
                    if isinstance(r, BaseException) and not isinstance(r, ServiceError):
                        raise r
                    results[n] = r

            await asyncio.gather(*(run_group(cfg, members) for cfg, members in groups.items()))
        return [(n, results[n]) for n in names]


def _preprocess_of(lv: LoadedVersion) -> PreprocessConfig:
    """The preprocessing a loaded version's manifest asks for (models sharing it share a decode; the
    accepted input range plays no part in decoding)."""
    cfg = lv.runtime.spec.manifest.preprocess
    return cfg if cfg.input_range is None else cfg.model_copy(update={"input_range": None})
