"""GPU metrics under Triton's names, read from NVIDIA's management library (`nvidia-ml-py`) at scrape time.

    nv_gpu_utilization{gpu_uuid}          GPU utilisation rate, 0.0 - 1.0
    nv_gpu_memory_total_bytes{gpu_uuid}   GPU total memory, bytes
    nv_gpu_memory_used_bytes{gpu_uuid}    GPU used memory, bytes
    nv_gpu_power_usage{gpu_uuid}          GPU power usage, watts

Why a custom collector: the values belong to the device, not to requests, so they are read when
Prometheus scrapes (no polling thread). Absent, not zero, without a GPU: the collector is only
registered when `nvidia-ml-py` is installed (the optional `gpu` extra) and NVML initialises with at
least one device; a reading that fails on one scrape (a device lost, a field the board does not
report) leaves that series out of that scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("vitserve.gpu")

LABEL = "gpu_uuid"
#: every series this module can expose (the contract with docker/grafana dashboards)
METRIC_NAMES = ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes", "nv_gpu_power_usage")


class GpuCollector(Collector):
    """Reads utilisation, memory and power of every NVML device on each scrape."""

    def __init__(self, nvml: ModuleType, handles: list[tuple[str, Any]]) -> None:
        self._nvml = nvml
        self._handles = handles

    def describe(self) -> list[Metric]:
        return []  # values are read at scrape time only; nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=[LABEL])
        total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=[LABEL])
        used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=[LABEL])
        power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=[LABEL])
        for uuid, handle in self._handles:
            try:
                util.add_metric([uuid], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            except nvml.NVMLError:
                pass
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                total.add_metric([uuid], float(memory.total))
                used.add_metric([uuid], float(memory.used))
            except nvml.NVMLError:
                pass
            try:
                power.add_metric([uuid], nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # milliwatts
            except nvml.NVMLError:
                pass
        for family in (util, total, used, power):
            if family.samples:
                yield family


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def gpu_collector(nvml: ModuleType | None = None) -> GpuCollector | None:
    """A collector over every NVML device, or None (no nvidia-ml-py, no driver, or no device)."""
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
        handles = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            handles.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
    except nvml.NVMLError as exc:
        log.debug("no GPU metrics: NVML unavailable (%s)", exc)
        return None
    if not handles:
        return None
    return GpuCollector(nvml, handles)


def register_gpu_metrics(registry: CollectorRegistry, nvml: ModuleType | None = None) -> bool:
    """Add the GPU collector to `registry` when there is a GPU to report; True if added."""
    collector = gpu_collector(nvml)
    if collector is None:
        return False
    registry.register(collector)
    log.info("GPU metrics on for %d device(s): %s", len(collector._handles),
             ", ".join(uuid for uuid, _ in collector._handles))
    return True
