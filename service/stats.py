"""Per-model-version observer: feeds batcher events into Prometheus and plain Triton-style counts.

`VersionObserver` is the `BatcherHooks` the model store gives each version's batcher; it updates the
app's `Metrics` and a `StatsAccumulator` of plain counts (`VersionCounts`). The /v2 router shapes a
snapshot into Triton's statistics response (service/api/v2_meta.py: `model_statistics`); the core
knows no wire format.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from service.batcher import BatcherHooks, PendingRequest
from service.errors import exception_summary
from service.metrics import Metrics


@dataclass(frozen=True)
class Duration:
    """How many times something happened and how long it took in all (nanoseconds)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> Duration:
        return Duration(self.count + 1, self.ns + max(0, int(ns)))


@dataclass(frozen=True)
class Phases:
    """The compute phases of Triton's statistics (input copy, inference, output copy)."""

    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()

    def add(self, input_ns: int, infer_ns: int, output_ns: int) -> Phases:
        return Phases(self.compute_input.add(input_ns), self.compute_infer.add(infer_ns),
                      self.compute_output.add(output_ns))


@dataclass(frozen=True)
class VersionCounts:
    """Cumulative statistics of one model version, as plain numbers."""

    model: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # batch items computed
    execution_count: int = 0  # batches computed
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    request_phases: Phases = Phases()
    batches: dict[int, Phases] = field(default_factory=dict)  # per batch size


class StatsAccumulator:
    """Triton-style cumulative statistics for one model version; thread-safe.

    Per request (`record_success` / `record_failure`): success or fail duration end to end, time
    queued and the compute phases of the batch it rode in. Per execution (`record_execution`):
    inference and execution counts and the per-batch-size compute times.
    """

    def __init__(self, model: str, version: str) -> None:
        self._lock = threading.Lock()
        self._counts = VersionCounts(model, version)

    def record_success(
        self, *, total_ns: int, queue_ns: int, compute_input_ns: int = 0, compute_infer_ns: int = 0,
        compute_output_ns: int = 0,
    ) -> None:
        with self._lock:
            c = self._counts
            self._counts = replace(c, success=c.success.add(total_ns), queue=c.queue.add(queue_ns),
                                   request_phases=c.request_phases.add(compute_input_ns, compute_infer_ns,
                                                                       compute_output_ns))

    def record_failure(self, *, total_ns: int) -> None:
        with self._lock:
            self._counts = replace(self._counts, fail=self._counts.fail.add(total_ns))

    def record_execution(
        self, *, batch_size: int, compute_input_ns: int = 0, compute_infer_ns: int = 0, compute_output_ns: int = 0,
        now_ms: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with self._lock:
            c = self._counts
            batches = dict(c.batches)
            batches[batch_size] = batches.get(batch_size, Phases()).add(compute_input_ns, compute_infer_ns,
                                                                        compute_output_ns)
            self._counts = replace(
                c, inference_count=c.inference_count + batch_size, execution_count=c.execution_count + 1,
                last_inference_ms=int(time.time() * 1000) if now_ms is None else now_ms, batches=batches,
            )

    def snapshot(self) -> VersionCounts:
        with self._lock:
            return self._counts  # immutable: every record builds a new one


class VersionObserver(BatcherHooks):
    """Metrics and statistics of one (model, version)."""

    def __init__(self, metrics: Metrics, model: str, version: int, flops_per_image: int) -> None:
        self.metrics = metrics
        self.model = model
        self.version = str(version)
        self.flops_per_image = flops_per_image
        self.stats = StatsAccumulator(model, self.version)
        self.last_error: str | None = None
        self._labels = {"model": model, "version": self.version}

    def on_queue_depth(self, images: int) -> None:
        self.metrics.queue_depth.labels(**self._labels).set(images)

    def on_batch(self, size: int, compute_s: float, requests: list[PendingRequest], dispatched_at: float) -> None:
        m, lb = self.metrics, self._labels
        m.batch_size.labels(**lb).observe(size)
        m.compute_duration.labels(**lb).observe(compute_s)
        m.batches.labels(**lb).inc()
        m.inferences.labels(**lb).inc(size)
        m.flops.labels(**lb).inc(size * self.flops_per_image)
        queue_hist = m.queue_duration.labels(**lb)
        for req in requests:
            queue_hist.observe(max(0.0, dispatched_at - req.enqueued_at))
        self.stats.record_execution(batch_size=size, compute_infer_ns=int(compute_s * 1e9))

    def on_batch_failed(self, size: int, error: BaseException) -> None:
        self.metrics.batch_failures.labels(**self._labels).inc()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.last_error = f"{stamp} batch of {size} failed: {exception_summary(error)}"

    def on_expired(self, images: int) -> None:
        self.metrics.deadline_expired.labels(model=self.model).inc()

    def on_rejected(self, images: int) -> None:
        self.metrics.rejected.labels(model=self.model, reason="queue_full").inc()

    def request_succeeded(self, total_s: float, queue_s: float, compute_s: float) -> None:
        self.stats.record_success(
            total_ns=int(total_s * 1e9), queue_ns=int(queue_s * 1e9), compute_infer_ns=int(compute_s * 1e9)
        )

    def request_failed(self, total_s: float) -> None:
        self.stats.record_failure(total_ns=int(total_s * 1e9))

    def snapshot(self) -> VersionCounts:
        return self.stats.snapshot()
