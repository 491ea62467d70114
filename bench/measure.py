"""What a measurement is configured by and reports against, shared by both load generators (bench/loadgen.py,
bench/wrk.py): its windows and stopping rule, where its server figures come from, how it reports progress."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Progress = Callable[[str], None]
#: the load generator: bench/client.py's HTTP client, wrk (bench/wrk.py) or bench/grpc_client.py's gRPC client
Client = Literal["python", "wrk", "grpc", "grpc-stream"]


def stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class MeasureConfig:
    """How long and how to decide a measurement is done."""

    window_s: float = 2.0
    warmup_s: float = 1.0
    stability_windows: int = 3
    tolerance: float = 0.10
    stability_percentile: int = 95
    max_windows: int = 10
    fixed_duration_s: float | None = None  # measure exactly this long instead of until stable
    request_timeout_s: float = 60.0
    min_requests_per_window: int = 20  # a window with fewer completions doubles the next window's length...
    max_window_s: float = 12.0  # ...up to this (slow models: perf_analyzer's count-windows idea)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.warmup_s < 0:
            raise ValueError("window_s must be > 0 and warmup_s >= 0")
        if self.max_windows < self.stability_windows:
            raise ValueError("max_windows must be >= stability_windows")
        if self.fixed_duration_s is not None and self.fixed_duration_s <= 0:
            raise ValueError("fixed duration must be positive")


@dataclass(frozen=True)
class ServerReading:
    """What a measurement reads besides the responses: how points are labelled and where server figures come from.

    protocol: the label each LoadPoint records; parse_json: read a JSON `timings` object when a response
    has no Server-Timing header; stats_path: a Triton-shaped statistics endpoint for the server's split;
    server_pgid: the server's process group, whose CPU time is measured; grpc_target: host:port to send the
    requests to as gRPC calls instead of HTTP (bench/grpc_client.py); grpc_stream: as messages on one
    `ModelStreamInfer` stream instead of unary calls.
    """

    protocol: str = ""
    parse_json: bool = True
    stats_path: str | None = None
    server_pgid: int | None = None
    grpc_target: str | None = None
    grpc_stream: bool = False
