"""Per-model-version observer: feeds batcher events into Prometheus and Triton's statistics.

`VersionObserver` is the `BatcherHooks` the registry gives each version's batcher; it updates the
app's `Metrics` and a `ModelStatsAccumulator` (service/v2_meta.py) whose snapshot is what
`/v2/models/{m}/stats` returns in Triton's shape.
"""

from __future__ import annotations

import time

from service.batcher import BatcherHooks, PendingRequest
from service.metrics import Metrics
from service.v2_meta import ModelStatistics, ModelStatsAccumulator


class VersionObserver(BatcherHooks):
    """Metrics and Triton statistics of one (model, version)."""

    def __init__(self, metrics: Metrics, model: str, version: int, flops_per_image: int) -> None:
        self.metrics = metrics
        self.model = model
        self.version = str(version)
        self.flops_per_image = flops_per_image
        self.stats = ModelStatsAccumulator()
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

    def on_queue_depth(self, images: int) -> None:
        self._queue_depth.set(images)

    def on_batch(self, size: int, compute_s: float, requests: list[PendingRequest], dispatched_at: float) -> None:
        self._batch_size.observe(size)
        self._compute.observe(compute_s)
        self._batches.inc()
        self._inferences.inc(size)
        self._flops.inc(size * self.flops_per_image)
        for req in requests:
            self._queue.observe(max(0.0, dispatched_at - req.enqueued_at))
        self.stats.record_execution(batch_size=size, compute_infer_ns=int(compute_s * 1e9))

    def on_batch_failed(self, size: int, error: BaseException) -> None:
        self.metrics.batch_failures.labels(**self._labels).inc()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = (str(error).strip().splitlines() or [""])[0][:200]
        self.last_error = f"{stamp} batch of {size} failed: {type(error).__name__}: {text}"

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

    def snapshot(self) -> ModelStatistics:
        return self.stats.snapshot(self.model, self.version)
