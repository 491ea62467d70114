"""Locked contracts: the HTTP routes (OpenAPI) and the exported metric names and labels.

Dashboards, alert rules, tritonclient and the benchmark depend on these; changing one must be a
deliberate edit of this file (and a note to whoever consumes it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import service.metrics as metrics_module
from service.app import create_app
from service.manifest import DatasetIdentity, Evaluation
from service.metrics import Metrics
from service.settings import Settings

ROUTES = {
    ("/", "GET"), ("/metrics", "GET"),
    ("/v1/compare", "POST"), ("/v1/models", "GET"), ("/v1/models/{model}", "GET"),
    ("/v1/models/{model}/classify", "POST"),
    ("/v2", "GET"), ("/v2/health/live", "GET"), ("/v2/health/ready", "GET"), ("/v2/models/stats", "GET"),
    ("/v2/models/{model}", "GET"), ("/v2/models/{model}/config", "GET"), ("/v2/models/{model}/infer", "POST"),
    ("/v2/models/{model}/ready", "GET"), ("/v2/models/{model}/stats", "GET"),
    ("/v2/models/{model}/versions/{version}", "GET"), ("/v2/models/{model}/versions/{version}/config", "GET"),
    ("/v2/models/{model}/versions/{version}/infer", "POST"), ("/v2/models/{model}/versions/{version}/ready", "GET"),
    ("/v2/models/{model}/versions/{version}/stats", "GET"),
    ("/v2/repository/index", "POST"), ("/v2/repository/models/{model}/load", "POST"),
    ("/v2/repository/models/{model}/unload", "POST"),
}

# name -> (type, labels); DESIGN.md names first, then vitserve's extras.
METRICS = {
    "vitserve_request_duration_seconds": ("histogram", {"model", "endpoint", "code", "protocol"}),
    "vitserve_queue_duration_seconds": ("histogram", {"model", "version"}),
    "vitserve_preprocess_duration_seconds": ("histogram", {"model"}),
    "vitserve_compute_duration_seconds": ("histogram", {"model", "version"}),
    "vitserve_batch_size": ("histogram", {"model", "version"}),
    "vitserve_requests_total": ("counter", {"model", "code", "protocol"}),
    "vitserve_inferences_total": ("counter", {"model", "version"}),
    "vitserve_flops_total": ("counter", {"model", "version"}),
    "vitserve_queue_depth": ("gauge", {"model", "version"}),
    "vitserve_model_ready": ("gauge", {"model", "version", "provider"}),
    "vitserve_model_flops": ("gauge", {"model"}),
    "vitserve_model_parameters": ("gauge", {"model"}),
    "vitserve_model_load_seconds": ("gauge", {"model"}),
    "vitserve_batches_total": ("counter", {"model", "version"}),
    "vitserve_batch_failures_total": ("counter", {"model", "version"}),
    "vitserve_deadline_expired_total": ("counter", {"model"}),
    "vitserve_rejected_total": ("counter", {"model", "reason"}),
    "vitserve_nonfinite_outputs_total": ("counter", {"model"}),
    "vitserve_queue_capacity": ("gauge", {"model", "version"}),
    "vitserve_model_state": ("gauge", {"model", "state"}),
    "vitserve_server_ready": ("gauge", set()),
    "vitserve_model_accuracy": ("gauge", {"model", "dataset", "metric"}),
}


def test_routes_are_the_documented_ones(tiny_repository: Path) -> None:
    spec = create_app(Settings(repository=tiny_repository)).openapi()
    routes = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert routes == ROUTES


OPENAPI_SNAPSHOT = Path(__file__).with_name("openapi.json")


def test_openapi_is_byte_identical_to_the_snapshot(tmp_path: Path) -> None:
    """The public API does not change by accident: the document equals the committed snapshot (generated
    from main before the store/pipeline redesign). Regenerate it only for a deliberate API change:
    json.dumps(create_app(Settings(repository=<empty dir>)).openapi(), indent=2, ensure_ascii=False) + "\n"."""
    spec = create_app(Settings(repository=tmp_path)).openapi()
    assert json.dumps(spec, indent=2, ensure_ascii=False) + "\n" == OPENAPI_SNAPSHOT.read_text()


def test_metric_names_types_and_labels_are_locked() -> None:
    m = Metrics()
    m.init_version("m", "1", 64)
    m.requests.labels(model="m", code="200", protocol="http").inc()
    m.request_duration.labels(model="m", endpoint="v1_classify", code="200", protocol="grpc").observe(0.1)
    m.model_ready.labels(model="m", version="1", provider="CPUExecutionProvider").set(1)
    m.model_flops.labels(model="m").set(1)
    m.model_parameters.labels(model="m").set(1)
    m.model_load_seconds.labels(model="m").set(1)
    m.set_state("m", "ready")
    m.set_accuracy("m", Evaluation(top1=0.9, top5=1.0, num_images=10, dataset=DatasetIdentity(
        name="d", fingerprint="ab" * 32, split="val/", num_classes=10)))
    text = m.render().decode()
    found: dict[str, tuple[str, set[str]]] = {}
    for family in m.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        found[name] = (family.type, labels)
    assert found == METRICS
    documented = set(re.findall(r"vitserve_[a-z_]+", metrics_module.__doc__ or ""))
    assert set(METRICS) <= documented, "every metric is listed in service/metrics.py's docstring"
    assert "# TYPE vitserve_batch_size histogram" in text


def test_accuracy_gauge_follows_the_manifest_evaluation_across_reloads() -> None:
    def evaluation(name: str, top1: float) -> Evaluation:
        return Evaluation(top1=top1, top5=None, num_images=10, dataset=DatasetIdentity(
            name=name, fingerprint="cd" * 32, split="val/", num_classes=10))

    m = Metrics()
    m.set_accuracy("m", evaluation("first", 0.5))
    m.set_accuracy("m", evaluation("second", 0.75))
    text = m.render().decode()
    assert 'vitserve_model_accuracy{dataset="second@cdcdcdcdcdcd",metric="top1",model="m"} 0.75' in text
    assert "first@" not in text and 'metric="top5"' not in text  # a reload replaces the series
    m.set_accuracy("m", None)
    assert "vitserve_model_accuracy{" not in m.render().decode()


def test_manifests_written_before_the_evaluation_schema_still_load() -> None:
    legacy = Evaluation.model_validate({"heldout_accuracy": 0.95})
    assert legacy.top1 == 0.95 and legacy.dataset is None and legacy.measured_with.startswith("legacy")
    with pytest.raises(ValueError):
        Evaluation.model_validate({"top1": 1.5})
