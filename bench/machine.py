"""What machine and software a result was measured on, recorded with every result.

Absolute times only mean something next to the CPU, core count, load and library versions
they were measured with, so every JSON result carries this block and BENCHMARKS.md prints it.
The load average is recorded before and after a run: on a shared machine a high load means
other processes competed for the cores.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, Field

_PACKAGES = ("onnxruntime-gpu", "onnxruntime", "numpy", "torch", "onnx", "aiohttp", "fastapi", "uvicorn")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags that decide GEMM speed (avx2, avx512*, amx*, vnni), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f)
    except OSError:
        pass
    return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class MachineInfo(BaseModel):
    cpu_model: str
    cores: int = Field(description="CPUs this process may run on (sched_getaffinity)")
    cpu_flags: list[str]
    platform: str
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float] | None = None
    started_at: datetime
    finished_at: datetime | None = None
    versions: dict[str, str]

    def finish(self) -> MachineInfo:
        return self.model_copy(update={"load_average_end": load_average(), "finished_at": datetime.now(UTC)})

    def summary(self) -> str:
        la = self.load_average_start
        end = f", end {self.load_average_end[0]:.2f}" if self.load_average_end else ""
        return (
            f"{self.cpu_model}, {self.cores} cores ({', '.join(self.cpu_flags) or 'no AVX flags'}); "
            f"load average at start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}{end}"
        )


def machine_info() -> MachineInfo:
    return MachineInfo(
        cpu_model=cpu_model(),
        cores=usable_cores(),
        cpu_flags=cpu_flags(),
        platform=platform.platform(),
        load_average_start=load_average(),
        started_at=datetime.now(UTC),
        versions=package_versions(),
    )
