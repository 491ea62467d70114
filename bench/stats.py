"""Percentiles and the stability rule used by the load generator.

Kept free of I/O and clocks so the rules that decide when a measurement is "done" (and what
p99 means) are unit-tested on their own. Percentiles interpolate linearly between order
statistics, the same definition as numpy's default, so figures can be recomputed from the
raw samples with numpy. Stability follows perf_analyzer: the last `count` measurement windows
are stable when, for throughput and for the chosen latency percentile, every window lies
within `tolerance` of the windows' mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`, linear interpolation (numpy's default)."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    if len(values) == 0:
        raise ValueError("percentile of an empty sample is undefined")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


T = TypeVar("T")


def lower_median(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The item whose `key` is the median (the lower middle one of an even count): one measured item, whose
    figures belong together, never an average of items."""
    if len(items) == 0:
        raise ValueError("median of an empty sample is undefined")
    return sorted(items, key=key)[(len(items) - 1) // 2]


def mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("mean of an empty sample is undefined")
    return math.fsum(values) / len(values)


class Window(BaseModel):
    """One measurement window: completed requests, their throughput and a latency figure."""

    model_config = ConfigDict(frozen=True)

    duration_s: float
    count: int
    throughput: float
    latency_us: float


def within(values: Sequence[float], tolerance: float) -> bool:
    """True when every value is within `tolerance` (a fraction) of the values' mean."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if len(values) == 0:
        return False
    m = mean(values)
    if m == 0:
        return all(v == 0 for v in values)
    return all(abs(v - m) <= tolerance * abs(m) for v in values)


def is_stable(windows: Sequence[Window], count: int = 3, tolerance: float = 0.10) -> bool:
    """perf_analyzer's rule: the last `count` windows agree on throughput and latency within `tolerance`.

    A window that completed no request is never stable (the server may be stalled).
    """
    if count < 1:
        raise ValueError(f"stability window count must be >= 1, got {count}")
    if len(windows) < count:
        return False
    last = windows[-count:]
    if any(w.count == 0 for w in last):
        return False
    return within([w.throughput for w in last], tolerance) and within([w.latency_us for w in last], tolerance)
