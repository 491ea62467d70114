"""GPU metrics: Triton's names, units and label read through a fake NVML (the module monkeypatched),
absent (never zero) when NVML has no driver, no device, or a reading fails."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.gpu_metrics import METRIC_NAMES, register_gpu_metrics


class NVMLError(Exception):
    pass


@dataclass
class _Util:
    gpu: int
    memory: int = 0


@dataclass
class _Memory:
    total: int
    used: int
    free: int = 0


def fake_nvml(devices: list[dict], *, init_error: bool = False) -> types.ModuleType:
    """A stand-in for `pynvml` with the calls the collector makes; `devices` hold the readings
    (a reading set to None raises NVMLError, as NVML does for fields a board does not report)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def reading(key: str):
        def get(handle: int):
            value = devices[handle][key]
            if value is None:
                raise NVMLError(f"{key} not supported")
            return value
        return get

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUUID = lambda h: devices[h]["uuid"]
    nvml.nvmlDeviceGetUtilizationRates = reading("util")
    nvml.nvmlDeviceGetMemoryInfo = reading("memory")
    nvml.nvmlDeviceGetPowerUsage = reading("power_mw")
    return nvml


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name.startswith("nv_gpu_"):
                out[(sample.name, sample.labels["gpu_uuid"])] = sample.value
    return out


H200 = {"uuid": "GPU-0000-aaaa", "util": _Util(gpu=37), "memory": _Memory(total=150_000_000_000, used=2_500_000_000),
        "power_mw": 123_456}


def test_triton_names_units_and_label_from_nvml() -> None:
    second = {"uuid": b"GPU-1111-bbbb", "util": _Util(gpu=100), "memory": _Memory(total=8, used=8), "power_mw": 70_000}
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, fake_nvml([H200, second]))
    assert _samples(registry) == {
        ("nv_gpu_utilization", "GPU-0000-aaaa"): 0.37,
        ("nv_gpu_memory_total_bytes", "GPU-0000-aaaa"): 150_000_000_000.0,
        ("nv_gpu_memory_used_bytes", "GPU-0000-aaaa"): 2_500_000_000.0,
        ("nv_gpu_power_usage", "GPU-0000-aaaa"): 123.456,
        ("nv_gpu_utilization", "GPU-1111-bbbb"): 1.0,
        ("nv_gpu_memory_total_bytes", "GPU-1111-bbbb"): 8.0,
        ("nv_gpu_memory_used_bytes", "GPU-1111-bbbb"): 8.0,
        ("nv_gpu_power_usage", "GPU-1111-bbbb"): 70.0,
    }
    assert {name for name, _ in _samples(registry)} == set(METRIC_NAMES)


def test_values_are_read_at_each_scrape() -> None:
    device = dict(H200)
    registry = CollectorRegistry()
    register_gpu_metrics(registry, fake_nvml([device]))
    device["util"] = _Util(gpu=90)
    assert _samples(registry)[("nv_gpu_utilization", "GPU-0000-aaaa")] == 0.9


def test_a_reading_that_fails_is_absent_not_zero() -> None:
    registry = CollectorRegistry()
    register_gpu_metrics(registry, fake_nvml([{**H200, "power_mw": None, "util": None}]))
    names = {name for name, _ in _samples(registry)}
    assert names == {"nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"}
    assert "nv_gpu_power_usage" not in generate_latest(registry).decode()  # not even the HELP line


@pytest.mark.parametrize("nvml", [fake_nvml([], init_error=True), fake_nvml([])], ids=["no-driver", "no-device"])
def test_no_gpu_registers_nothing(nvml: types.ModuleType) -> None:
    registry = CollectorRegistry()
    assert not register_gpu_metrics(registry, nvml)
    assert "nv_gpu_" not in generate_latest(registry).decode()


def test_without_nvidia_ml_py_registers_nothing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    registry = CollectorRegistry()
    assert not register_gpu_metrics(registry)


def test_the_app_exports_them_when_nvml_sees_a_gpu(monkeypatch, tmp_path) -> None:
    """create_app registers the collector: /metrics carries the series when (fake) NVML has a device."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([H200]))
    app = create_app(Settings(repository=tmp_path))
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-0000-aaaa"} 123.456' in text
