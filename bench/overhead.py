"""The load generator's own cost: how fast it can go and how much CPU it spends per request.

The generator runs on the same cores as the server, so it must be shown not to be the bottleneck.
Against the trivial echo server (bench/echo_server.py) with the very request body a benchmark
sends, the generator's throughput is its ceiling on this machine and its CPU time per request is
its overhead; a benchmark point is trustworthy when its throughput is well below that ceiling, and
its `client_cpu_cores` says how much of the machine the client took from the server.
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from bench.loadgen import MeasureConfig, closed_loop, run
from bench.payloads import RequestSpec
from bench.procs import echo_server
from bench.results import LoadPoint


class GeneratorOverhead(BaseModel):
    concurrency: int
    description: str
    max_requests_per_second: float
    client_cpu_us_per_request: float
    client_cpu_cores: float
    p50_latency_us: float
    point: LoadPoint

    def sentence(self) -> str:
        return (
            f"load generator ceiling on this machine: {self.max_requests_per_second:,.0f} req/s at concurrency "
            f"{self.concurrency} against a trivial server ({self.description}), "
            f"{self.client_cpu_us_per_request:.0f} µs of client CPU per request"
        )


def measure_overhead(spec: RequestSpec, concurrency: int = 16, cfg: MeasureConfig | None = None) -> GeneratorOverhead:
    """Drive the echo server with `spec` at `concurrency` and report the generator's ceiling and CPU cost."""
    cfg = cfg or MeasureConfig(window_s=1.0, warmup_s=0.5, max_windows=3, stability_windows=3)
    print(f"[overhead] generator vs trivial server, concurrency {concurrency}", file=sys.stderr, flush=True)
    with echo_server() as srv:
        point: LoadPoint = run(closed_loop(srv.url, spec, concurrency, cfg))  # type: ignore[assignment]
    return GeneratorOverhead(
        concurrency=concurrency,
        description=spec.description,
        max_requests_per_second=point.requests_per_second,
        client_cpu_us_per_request=point.client_cpu_us_per_request,
        client_cpu_cores=point.client_cpu_cores,
        p50_latency_us=point.latency_us["p50"],
        point=point,
    )
