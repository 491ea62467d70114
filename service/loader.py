"""Turning a repository entry into a warmed-up runtime: batching limits, runtime, warm-up.

Blocking work the model store (service/store.py) runs in its load thread: verify the model file against
the manifest, build the runtime its config.pbtxt asks for (service/runtimes: the table's entry), run
every batch size the batcher can produce. Every failure becomes a `ModelLoadError` whose reason the API
shows.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from service.batcher import BatchLimits
from service.compute_gate import ComputeGate
from service.errors import exception_summary
from service.repository import ModelEntry, ModelLoadError
from service.runtimes import InferenceRuntime, RuntimeBackend, RuntimeSpec, warmup_sizes
from service.settings import Settings


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
