"""Per-model-version observer: feeds batcher events into Prometheus and plain Triton-style counts.

`VersionObserver` is the `BatcherHooks` the model store gives each version's batcher; it updates the
app's `Metrics` and a `StatsAccumulator` of plain counts (`VersionCounts`). The /v2 router shapes a
snapshot into Triton's statistics response (service/api/v2_meta.py: `model_statistics`); the core
knows no wire format.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from service.batcher import BatcherHooks, PendingRequest
from service.errors import exception_summary
from service.metrics import Metrics, observe_many


@dataclass(frozen=True)
class Duration:
    """How many times something happened and how long it took in all (nanoseconds)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class Phases:
    """The compute phases of Triton's statistics (input copy, inference, output copy)."""

    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()


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
    inference and execution counts and the per-batch-size compute times. Recording adds to plain
    running totals (it runs for every request); `snapshot` builds the immutable `VersionCounts`.
    """

    def __init__(self, model: str, version: str) -> None:
        self._lock = threading.Lock()
        self._model, self._version = model, version
        self._last_inference_ms = 0
        self._inference_count = 0
        self._execution_count = 0
        # [count, ns] per duration; [count, input ns, infer ns, output ns] per set of phases
        self._success = [0, 0]
        self._fail = [0, 0]
        self._queue = [0, 0]
        self._phases = [0, 0, 0, 0]
        self._batches: dict[int, list[int]] = {}

    def record_success(
        self, *, total_ns: int, queue_ns: int, compute_input_ns: int = 0, compute_infer_ns: int = 0,
        compute_output_ns: int = 0, count: int = 1,
    ) -> None:
        """`count` requests with these timings each (a front end's group of requests, answered together)."""
        with self._lock:
            _add(self._success, total_ns, count)
            _add(self._queue, queue_ns, count)
            _add_phases(self._phases, compute_input_ns, compute_infer_ns, compute_output_ns, count)

    def record_failure(self, *, total_ns: int, count: int = 1) -> None:
        with self._lock:
            _add(self._fail, total_ns, count)

    def record_execution(
        self, *, batch_size: int, compute_input_ns: int = 0, compute_infer_ns: int = 0, compute_output_ns: int = 0,
        now_ms: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with self._lock:
            phases = self._batches.get(batch_size)
            if phases is None:
                phases = self._batches[batch_size] = [0, 0, 0, 0]
            _add_phases(phases, compute_input_ns, compute_infer_ns, compute_output_ns)
            self._inference_count += batch_size
            self._execution_count += 1
            self._last_inference_ms = int(time.time() * 1000) if now_ms is None else now_ms

    def snapshot(self) -> VersionCounts:
        with self._lock:
            return VersionCounts(
                self._model, self._version, last_inference_ms=self._last_inference_ms,
                inference_count=self._inference_count, execution_count=self._execution_count,
                success=Duration(*self._success), fail=Duration(*self._fail), queue=Duration(*self._queue),
                request_phases=_phases(self._phases),
                batches={size: _phases(p) for size, p in self._batches.items()},
            )


def _add(total: list[int], ns: int, count: int = 1) -> None:
    total[0] += count
    total[1] += max(0, int(ns)) * count


def _add_phases(total: list[int], input_ns: int, infer_ns: int, output_ns: int, count: int = 1) -> None:
    total[0] += count
    total[1] += max(0, int(input_ns)) * count
    total[2] += max(0, int(infer_ns)) * count
    total[3] += max(0, int(output_ns)) * count


def _phases(total: list[int]) -> Phases:
    count = total[0]
    return Phases(Duration(count, total[1]), Duration(count, total[2]), Duration(count, total[3]))


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
        # this version's series, looked up once (they are updated on every request and batch)
        lb = self._labels
        self._queue_depth = metrics.queue_depth.labels(**lb)
        self._batch_size = metrics.batch_size.labels(**lb)
        self._compute = metrics.compute_duration.labels(**lb)
        self._batches = metrics.batches.labels(**lb)
        self._inferences = metrics.inferences.labels(**lb)
        self._flops = metrics.flops.labels(**lb)
        self._queue = metrics.queue_duration.labels(**lb)
        self._preprocess = metrics.preprocess_duration.labels(model=model)

    def on_queue_depth(self, images: int) -> None:
        self._queue_depth.set(images)

    def on_batch(self, size: int, compute_s: float, requests: list[PendingRequest], dispatched_at: float) -> None:
        self._batch_size.observe(size)
        self._compute.observe(compute_s)
        self._batches.inc()
        self._inferences.inc(size)
        self._flops.inc(size * self.flops_per_image)
        # one observation per client request (a front end's group stands for several)
        observe_many(self._queue, [max(0.0, dispatched_at - req.enqueued_at) for req in requests
                                   for _ in range(req.requests)])
        self.stats.record_execution(batch_size=size, compute_infer_ns=int(compute_s * 1e9))

    def on_batch_failed(self, size: int, error: BaseException) -> None:
        self.metrics.batch_failures.labels(**self._labels).inc()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.last_error = f"{stamp} batch of {size} failed: {exception_summary(error)}"

    def on_expired(self, images: int, requests: int = 1) -> None:
        self.metrics.deadline_expired.labels(model=self.model).inc(requests)

    def on_rejected(self, images: int, requests: int = 1) -> None:
        self.metrics.rejected.labels(model=self.model, reason="queue_full").inc(requests)

    def on_preprocessed(self, seconds: float) -> None:
        """One image decoded and transformed for this model (the series is per model, not per version)."""
        self._preprocess.observe(seconds)

    def request_succeeded(self, total_s: float, queue_s: float, compute_s: float, count: int = 1) -> None:
        self.stats.record_success(
            total_ns=int(total_s * 1e9), queue_ns=int(queue_s * 1e9), compute_infer_ns=int(compute_s * 1e9),
            count=count,
        )

    def request_failed(self, total_s: float, count: int = 1) -> None:
        self.stats.record_failure(total_ns=int(total_s * 1e9), count=count)

    def snapshot(self) -> VersionCounts:
        return self.stats.snapshot()
