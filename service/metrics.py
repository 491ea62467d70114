"""Prometheus metrics of one app, in their own CollectorRegistry (so several apps can live in one process).

With `--http-workers N` every process writes its counters and histograms to prometheus_client's
multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor, with `VITSERVE_METRICS_DIR`
naming the same directory so an inherited PROMETHEUS_MULTIPROC_DIR alone changes nothing) and the
engine's `render` sums them over every process that ever ran (a replaced front end's counts stay).
Gauges are kept in-process (so a series can be removed, e.g. a reloaded model's old accuracy): only
the engine sets the ones /metrics shows (model states, queues, readiness: a front end that starts
draining tells the engine, which sets readiness off).

Exported names and labels (the contract with docker/grafana dashboards and alert rules):

Histograms (seconds unless noted)
  vitserve_request_duration_seconds{model,endpoint,code,protocol}
                                                           end to end, per inference endpoint
                                                           (endpoint: v1_classify, v1_compare, v2_infer;
                                                           protocol: http, or grpc for v2_infer over gRPC)
  vitserve_queue_duration_seconds{model,version}           time a request waited in the batch queue
  vitserve_preprocess_duration_seconds{model}              image decode + transform, per image
  vitserve_compute_duration_seconds{model,version}         ONNX Runtime run, per batch
  vitserve_batch_size{model,version}                       images per executed batch (buckets 1,2,4,...,128)
Counters
  vitserve_requests_total{model,code,protocol}             requests answered, by HTTP status code (a gRPC
                                                           answer counts under the HTTP status REST gives the
                                                           same outcome: 200, 400, 499, 503, 504...)
  vitserve_inferences_total{model,version}                 images computed
  vitserve_flops_total{model,version}                      FLOPs executed (images x manifest FLOPs per image)
  vitserve_batches_total{model,version}                    batches executed
  vitserve_batch_failures_total{model,version}             batches the runtime failed
  vitserve_deadline_expired_total{model}                   requests past their deadline, never computed (504)
  vitserve_rejected_total{model,reason}                    requests refused before queueing
                                                           (reason: queue_full, not_ready)
  vitserve_nonfinite_outputs_total{model}                  requests whose output had NaN/inf (answered 500)
Gauges
  vitserve_queue_depth{model,version}                      images waiting in the queue
  vitserve_queue_capacity{model,version}                   the queue bound in images (alert on depth/capacity)
  vitserve_model_ready{model,version,provider}             1 when the version serves, else 0
  vitserve_model_state{model,state}                        1 for the model's current state
                                                           (ready, loading, failed, unloading, unloaded)
  vitserve_model_flops{model}                              FLOPs per image
  vitserve_model_parameters{model}                         parameter count
  vitserve_model_load_seconds{model}                       load + warm-up time of the last load
  vitserve_model_accuracy{model,dataset,metric}            held-out accuracy from the manifest's evaluation
                                                           (metric: top1, top5; dataset: `<name>@<fingerprint
                                                           prefix>`): compare only within one dataset value
  vitserve_server_ready                                    1 while the server reports ready

Label values: `model` is a model name from the repository; requests naming an unknown model are
counted under model="_unknown" and /v1/compare requests under model="_compare" (bounded
cardinality). `version` is the model version as a string. When a version is loaded its series
(batch_size, compute/queue durations, inferences, flops, batches, queue depth/capacity) are created
at 0, so dashboards show them before traffic.
"""

from __future__ import annotations

import bisect
import functools
import os
import warnings
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.manifest import Evaluation

PREFIX = "vitserve_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                   30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MODEL_STATES = ("ready", "loading", "failed", "unloading", "unloaded")
#: set (with PROMETHEUS_MULTIPROC_DIR) by the `--http-workers` supervisor only
WORKERS_METRICS_DIR_ENV = "VITSERVE_METRICS_DIR"


def use_process_local_pid() -> None:
    """Give the multiprocess values a pid read once per process instead of at every write.

    prometheus_client's multiprocess value calls `os.getpid()` (a system call) on every increment, to notice
    a fork (a pre-forking server's workers). vitserve's processes are spawned, never forked, yet a front end
    writes five values per request. Its documented `process_identifier` hook takes the pid kept here,
    renewed in a forked child (`os.register_at_fork`), so every process still writes its own file. Call it in
    a spawned process before any metric is created (the values made before would keep another file map).
    """
    if not isinstance(values.ValueClass, type) or not getattr(values.ValueClass, "_multiprocess", False):
        return  # single-process values: nothing to speed up
    pid = [os.getpid()]

    def renew() -> None:
        pid[0] = os.getpid()

    os.register_at_fork(after_in_child=renew)
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid[0])


class _LocalGauge(Gauge):
    """A gauge whose values stay in this process (prometheus_client's multiprocess files cannot forget
    a removed series)."""

    def _metric_init(self) -> None:
        self._value = values.MutexValue(self._type, self._name, self._name, self._labelnames, self._labelvalues,
                                        self._documentation)

    def remove(self, *labelvalues: Any) -> None:
        with warnings.catch_warnings():  # its "not implemented in multi-process mode" does not apply here
            warnings.simplefilter("ignore", UserWarning)
            super().remove(*labelvalues)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe(a)` for every amount (a labelled child), writing each bucket touched and the sum once.

    A batch's requests each observe their queue time; with `--http-workers` every write to a value is a lock
    and a system call (the multiprocess mode checks its pid), so one write per bucket per batch replaces two
    per request. The exposition is the same as observing one by one (a test compares them). Falls back to
    `observe` where a prometheus_client version keeps its buckets otherwise."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    histogram._raise_if_not_observable()  # a labelled parent refuses, as observe() does
    counts: dict[int, int] = {}
    added = 0.0
    for amount in amounts:
        added += amount
        if amount != amount:  # NaN: as observe(), into the sum and no bucket (it compares with no bound)
            continue
        i = bisect.bisect_left(bounds, amount)  # the first bound >= amount (the last is +Inf)
        counts[i] = counts.get(i, 0) + 1
    total.inc(added)
    for i, n in counts.items():
        buckets[i].inc(n)


class Metrics:
    """Every vitserve metric, registered in `self.registry`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        gauge = functools.partial(_LocalGauge, registry=r)
        p = PREFIX
        self.request_duration = Histogram(
            p + "request_duration_seconds", "End-to-end request latency", ["model", "endpoint", "code", "protocol"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            p + "queue_duration_seconds", "Time waiting in the batch queue", ["model", "version"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.preprocess_duration = Histogram(
            p + "preprocess_duration_seconds", "Image decode and transform time per image", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_duration = Histogram(
            p + "compute_duration_seconds", "ONNX Runtime time per batch", ["model", "version"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size", "Images per executed batch", ["model", "version"], buckets=BATCH_BUCKETS, registry=r
        )
        self.requests = Counter(
            p + "requests_total", "Requests answered by status code", ["model", "code", "protocol"], registry=r
        )
        self.inferences = Counter(p + "inferences_total", "Images computed", ["model", "version"], registry=r)
        self.flops = Counter(p + "flops_total", "FLOPs executed", ["model", "version"], registry=r)
        self.batches = Counter(p + "batches_total", "Batches executed", ["model", "version"], registry=r)
        self.batch_failures = Counter(
            p + "batch_failures_total", "Batches the runtime failed", ["model", "version"], registry=r
        )
        self.deadline_expired = Counter(
            p + "deadline_expired_total", "Requests past their deadline, never computed", ["model"], registry=r
        )
        self.rejected = Counter(
            p + "rejected_total", "Requests refused before queueing", ["model", "reason"], registry=r
        )
        self.nonfinite_outputs = Counter(
            p + "nonfinite_outputs_total", "Requests whose model output held NaN or infinity (failed, never served)",
            ["model"], registry=r,
        )
        self.queue_depth = gauge(p + "queue_depth", "Images waiting in the queue", ["model", "version"])
        self.queue_capacity = gauge(
            p + "queue_capacity", "Queue bound in images", ["model", "version"]
        )
        self.model_ready = gauge(
            p + "model_ready", "1 when the model version serves", ["model", "version", "provider"]
        )
        self.model_state = gauge(p + "model_state", "1 for the model's current state", ["model", "state"])
        self.model_flops = gauge(p + "model_flops", "FLOPs per image", ["model"])
        self.model_parameters = gauge(p + "model_parameters", "Parameter count", ["model"])
        self.model_load_seconds = gauge(
            p + "model_load_seconds", "Load and warm-up time of the last load", ["model"]
        )
        self.server_ready = gauge(p + "server_ready", "1 while the server reports ready")
        self.model_accuracy = gauge(
            p + "model_accuracy", "Held-out accuracy (fraction) from the manifest; comparable within one dataset",
            ["model", "dataset", "metric"],
        )
        self._accuracy_labels: dict[str, list[tuple[str, str, str]]] = {}
        # the children of the per-request series, by (model, endpoint, code, protocol): `labels()` costs more than
        # the update
        self._request_series: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}

    def observe_request(self, model: str, endpoint: str, code: int, seconds: float, protocol: str = "http") -> None:
        """One answered request: `requests_total` and `request_duration_seconds` (`protocol`: http or grpc)."""
        key = (model, endpoint, code, protocol)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(model=model, code=str(code), protocol=protocol),
                self.request_duration.labels(model=model, endpoint=endpoint, code=str(code), protocol=protocol),
            )
        series[0].inc()
        series[1].observe(seconds)

    def set_state(self, model: str, state: str) -> None:
        for s in MODEL_STATES:
            self.model_state.labels(model=model, state=s).set(1.0 if s == state else 0.0)

    def init_version(self, model: str, version: str, queue_capacity: int) -> None:
        """Create a freshly loaded version's series at zero."""
        lb = {"model": model, "version": version}
        for metric in (self.queue_duration, self.compute_duration, self.batch_size, self.inferences, self.flops,
                       self.batches, self.batch_failures, self.queue_depth):
            metric.labels(**lb)
        self.queue_capacity.labels(**lb).set(queue_capacity)
        self.preprocess_duration.labels(model=model)
        self.deadline_expired.labels(model=model)
        self.nonfinite_outputs.labels(model=model)
        self.rejected.labels(model=model, reason="queue_full")

    def set_accuracy(self, model: str, evaluation: Evaluation | None) -> None:
        """Publish a model's held-out accuracy (replacing its previous series, e.g. after a reload)."""
        for labels in self._accuracy_labels.pop(model, []):
            self.model_accuracy.remove(*labels)
        if evaluation is None:
            return
        dataset = evaluation.dataset.key if evaluation.dataset is not None else "unknown"
        values = {"top1": evaluation.top1, "top5": evaluation.top5}
        published = []
        for metric, value in values.items():
            if value is not None:
                self.model_accuracy.labels(model=model, dataset=dataset, metric=metric).set(value)
                published.append((model, dataset, metric))
        self._accuracy_labels[model] = published

    def render(self) -> bytes:
        """The exposition; with `--http-workers` the total of every process's counters and histograms."""
        directory = os.environ.get(WORKERS_METRICS_DIR_ENV)
        if not directory:
            return generate_latest(self.registry)
        return generate_latest(_Total(directory, self.registry))


class _Total:
    """Every process's vitserve_* counters and histograms summed (prometheus_client's multiprocess
    collector), and this process's gauges and other collectors (the GPU's, which only the engine has)."""

    def __init__(self, directory: str, own: CollectorRegistry) -> None:
        self.directory = directory
        self.own = own

    def collect(self) -> Iterable[Metric]:
        yield from MultiProcessCollector(None, self.directory).collect()
        yield from (m for m in self.own.collect() if not m.name.startswith(PREFIX) or m.type == "gauge")
