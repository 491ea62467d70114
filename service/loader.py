"""The loading side of the model store: load, warm-up, atomic swap, poll, unload, drain (writes the catalog).

`ModelStore` is the catalog (service/catalog.py: what the pipeline reads) plus its writer. Loads run in
the background (runtime creation and warm-up in a worker thread, `build_version`) and are swapped in
atomically: requests that already hold the old version finish on it, the old batcher drains, then its
runtime closes. A model that fails to load is `failed` with its reason; the others serve. The drain
turns readiness off, closes intake and answers the accepted requests. Every load failure becomes a
`ModelLoadError` whose reason the API shows.

It knows no HTTP, wire format or runtime implementation: runtimes come from the runtimes table
(service/runtimes) by each model's config.pbtxt `backend`/`platform`, with options the table's entry
builds and the store passes on unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.batcher import Batcher, BatchLimits
from service.catalog import Catalog, LoadedVersion, ModelHandle, decode_config
from service.compute_gate import ComputeGate, cpu_cores
from service.errors import InvalidInput, ModelNotFound, ShuttingDown, exception_summary
from service.metrics import Metrics
from service.repository import ModelEntry, ModelLoadError, is_valid_model_name, list_model_names, read_model
from service.runtimes import (
    InferenceRuntime,
    RuntimeBackend,
    RuntimeSpec,
    import_runtime_modules,
    runtime_backend,
    warmup_sizes,
)
from service.settings import Settings
from service.stats import VersionObserver

log = logging.getLogger("vitserve.store")


def batch_limits(entry: ModelEntry, settings: Settings) -> BatchLimits:
    """The model's batching limits: config.pbtxt's dynamic_batching block, overridden by settings."""
    cfg = entry.config
    max_batch = settings.max_batch_size or cfg.max_batch_size
    db = cfg.dynamic_batching
    if settings.max_queue_delay_ms is not None:
        delay_s = settings.max_queue_delay_ms / 1000
    else:
        delay_s = db.max_queue_delay_microseconds / 1e6 if db else 0.0
    policy_size = db.default_queue_policy.max_queue_size if db and db.default_queue_policy else 0
    queue = settings.max_queue_size or policy_size or 8 * max_batch
    return BatchLimits(max_batch_size=max_batch, max_queue_delay_s=delay_s, max_queue_size=max(queue, max_batch))


def instance_count(entry: ModelEntry, settings: Settings) -> int:
    """Execution instances (batches computed at once on the version's one session): settings, else the
    config.pbtxt instance_group counts (Triton's), else 1 (a runtime may share its threads among them)."""
    return settings.instances or sum(g.count for g in entry.config.instance_group) or 1


def build_version(
    entry: ModelEntry,
    version: int,
    settings: Settings,
    backend: RuntimeBackend,
    options: object,
    stop: threading.Event | None = None,
    gate: ComputeGate | None = None,
) -> InferenceRuntime:
    """Blocking: verify the file, build the runtime (`backend`, with its `options`), warm up the batch sizes that
    matter. Runs in a thread.

    `stop` (set when the server shuts down) cancels the load between warm-up batch sizes, so a
    SIGTERM during a long warm-up does not keep the process alive until the warm-up ends. `gate`:
    warm-up runs take their turn on the cores like batches do, so a model still loading does not
    slow the ones already serving more than a model of theirs would.
    """

    def check_stop() -> None:
        if stop is not None and stop.is_set():
            raise ModelLoadError(entry.name, f"version {version}: load cancelled, the server is shutting down")

    check_stop()
    path = entry.verify(version)
    limits = batch_limits(entry, settings)
    spec = RuntimeSpec(
        name=entry.name,
        version=version,
        manifest=entry.manifest,
        max_batch_size=limits.max_batch_size,
        model_path=path,
        config=entry.config,
        instances=instance_count(entry, settings),
        options=options,
    )
    check_stop()
    try:
        runtime = backend.create(spec)
    except Exception as exc:  # noqa: BLE001 - corrupt graph, provider failure...
        raise ModelLoadError(entry.name, f"version {version}: cannot create session: {exception_summary(exc)}") from exc
    hold = gate.for_runtime(runtime.cpu_threads) if gate is not None else None
    db = entry.config.dynamic_batching
    sizes = (runtime.auto_warmup_sizes(limits.max_batch_size, db.preferred_batch_size if db else ())
             if settings.warmup == "auto" else warmup_sizes(limits.max_batch_size, settings.warmup))
    try:
        for size in sizes:
            check_stop()
            with hold() if hold is not None else contextlib.nullcontext():
                runtime.warmup([size])
    except ModelLoadError:
        runtime.close()
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime's warm-up may raise anything: the load fails with it
        runtime.close()
        raise ModelLoadError(entry.name, f"version {version}: warm-up failed: {exception_summary(exc)}") from exc
    return runtime


def directory_fingerprint(root: Path, name: str) -> tuple[Any, ...]:
    """What changes when a model directory is edited: names and mtimes of its files and version dirs."""
    directory = root / name
    try:
        items = [(p.name, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())]
        items += [(f"{p.parent.name}/{p.name}", p.stat().st_mtime_ns) for p in sorted(directory.glob("*/*"))]
    except OSError:
        return ()
    return tuple(items)


def publish(m: Metrics, handle: ModelHandle, old: dict[int, LoadedVersion]) -> None:
    """A swap's gauges: the old versions not ready, the new ones ready, the model's costs and accuracy."""
    entry = handle.entry
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


class ModelStore(Catalog):
    """The catalog and its writer: loads the repository's models and serves their versions to the pipeline."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        super().__init__(settings, metrics)
        self._options: dict[str, object] = {}  # per runtimes-table key: its options (opaque here)
        self._concurrent_sessions = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()
        self._drain_task: asyncio.Task[int] | None = None
        self._stop_loads = threading.Event()  # set at shutdown: loads in progress stop between warm-up sizes
        cores = cpu_cores()
        # models load side by side (session creation is mostly one thread); their warm-ups share the gate
        self._load_pool = ThreadPoolExecutor(max_workers=settings.load_concurrency or cores,
                                             thread_name_prefix="vitserve-load")
        self.compute_gate = ComputeGate(settings.compute_threads or cores)

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
                                                      decode_config(preprocess), preprocess.value_range)
            handle.entry = entry
            old = handle.serve(new_versions)  # the atomic swap
            handle.state, handle.reason = "ready", None
            handle.load_seconds = time.perf_counter() - started
            publish(self.metrics, handle, old)
            self._notify()
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

    async def load(self, name: str) -> None:
        """Load (or reload) a model: warm up in the background, swap atomically."""
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

    async def unload(self, name: str) -> None:
        """Stop routing to the model, let its accepted requests finish, close its sessions."""
        handle = self.handle(name)
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
