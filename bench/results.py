"""What a load measurement produces: one `Sample` per request, reduced to a `LoadPoint`.

The figures are perf_analyzer's (so they compare with Triton's tooling): throughput, latency
percentiles, the client send/receive and server queue/compute split, plus the CPU both sides used.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from bench.payloads import RequestSpec
from bench.stats import PERCENTILES, mean, percentile
from bench.timings import SERVER_TIMING_KEYS

__all__ = ["Mode", "Sample", "LoadPoint", "PERF_ANALYZER_COLUMNS", "summarise"]

Mode = Literal["concurrency", "rate"]


@dataclass(slots=True)
class Sample:
    """One finished request. Times are `time.perf_counter()` seconds; server timings in seconds."""

    start: float
    end: float
    status: int  # HTTP status, 0 = connection error / timeout, -1 = not sent (client backlog full)
    send_s: float = 0.0
    recv_s: float = 0.0
    server: dict[str, float] = field(default_factory=dict)
    images: int = 1


class LoadPoint(BaseModel):
    """The result of one concurrency level or one arrival rate, perf_analyzer's figures plus ours."""

    mode: Mode
    concurrency: int | None = None
    request_rate: float | None = None
    protocol: str = ""
    description: str = ""
    client: Literal["python", "wrk"] = Field("python", description="the load generator: bench/client.py or wrk")
    measured_s: float
    windows: int
    stable: bool
    requests: int = Field(description="successful requests in the reported windows")
    inferences_per_second: float = Field(description="images per second (requests x batch)")
    requests_per_second: float
    latency_us: dict[str, float] = Field(description="p50/p90/p95/p99/avg/min/max of successful requests, usec")
    client_send_us: float
    client_recv_us: float
    server_us: dict[str, float] = Field(default_factory=dict, description="mean server-reported timings, usec")
    server_timing_source: Literal["response", "v2-stats", "none"] = Field(
        "none", description="per-response timings (Server-Timing / JSON) or deltas of /v2/models/{m}/stats"
    )
    network_server_send_recv_us: float = Field(
        description="avg latency - client send - client recv - server queue - server compute (perf_analyzer's split)"
    )
    errors_by_status: dict[str, int] = Field(default_factory=dict)
    client_cpu_cores: float = Field(description="CPU time of the generator process / wall time during the measurement")
    server_cpu_cores: float | None = Field(None, description="CPU time of the server's process group / wall time")
    server_cpu_us_per_inference: float | None = Field(
        None, description="server CPU time per successful inference (robust to other load on the machine)"
    )
    client_cpu_us_per_request: float
    server_mean_batch_size: float | None = Field(
        None, description="images per batch the server executed (from /v2/models/{m}/stats deltas)"
    )
    server_loop_cpu_us_per_inference: float | None = Field(
        None, description="CPU time of the server process's main thread (a Python server's event loop: HTTP, "
                          "parsing, encoding, batching; not its compute threads) per successful inference"
    )

    @property
    def errors(self) -> int:
        return sum(self.errors_by_status.values())

    def perf_analyzer_row(self) -> dict[str, float | int]:
        """This point as a perf_analyzer CSV row (usec), columns named as perf_analyzer names them."""
        first = ("Concurrency", self.concurrency) if self.mode == "concurrency" else ("Request Rate", self.request_rate)
        s = self.server_us
        return {
            first[0]: first[1] if first[1] is not None else 0,
            "Inferences/Second": round(self.inferences_per_second, 2),
            "Client Send": _usec(self.client_send_us),
            "Network+Server Send/Recv": _usec(self.network_server_send_recv_us),
            "Server Queue": _usec(s.get("queue", 0.0)),
            "Server Compute Input": _usec(s.get("preprocess", 0.0)),
            "Server Compute Infer": _usec(s.get("compute", 0.0)),
            "Server Compute Output": _usec(s.get("postprocess", 0.0)),
            "Client Recv": _usec(self.client_recv_us),
            "p50 latency": _usec(self.latency_us["p50"]),
            "p90 latency": _usec(self.latency_us["p90"]),
            "p95 latency": _usec(self.latency_us["p95"]),
            "p99 latency": _usec(self.latency_us["p99"]),
            "Avg latency": _usec(self.latency_us["avg"]),
        }


def _usec(value: float) -> float | int:
    """A figure in whole usec; one the client did not measure (wrk splits no send/recv) stays NaN."""
    return value if math.isnan(value) else round(value)


PERF_ANALYZER_COLUMNS = list(
    LoadPoint(
        mode="concurrency",
        concurrency=1,
        measured_s=1,
        windows=1,
        stable=True,
        requests=1,
        inferences_per_second=1,
        requests_per_second=1,
        latency_us={"p50": 0, "p90": 0, "p95": 0, "p99": 0, "avg": 0},
        client_send_us=0,
        client_recv_us=0,
        network_server_send_recv_us=0,
        client_cpu_cores=0,
        client_cpu_us_per_request=0,
    ).perf_analyzer_row()
)


def summarise(
    samples: Sequence[Sample],
    wall_s: float,
    cpu_s: float,
    *,
    mode: Mode,
    windows: int,
    stable: bool,
    concurrency: int | None = None,
    request_rate: float | None = None,
    spec: RequestSpec | None = None,
    protocol: str = "",
    server_stats_us: dict[str, float] | None = None,
    server_cpu_s: float | None = None,
    server_mean_batch_size: float | None = None,
    server_loop_cpu_s: float | None = None,
) -> LoadPoint:
    """Reduce the samples of the reported windows to a LoadPoint."""
    if wall_s <= 0:
        raise ValueError("measurement wall time must be positive")
    ok = [s for s in samples if 200 <= s.status < 300]
    errors = Counter(("conn" if s.status == 0 else "client_backlog" if s.status < 0 else str(s.status))
                     for s in samples if not 200 <= s.status < 300)
    lat = [(s.end - s.start) * 1e6 for s in ok]
    if lat:
        latency = {f"p{q}": percentile(lat, q) for q in PERCENTILES}
        latency |= {"avg": mean(lat), "min": min(lat), "max": max(lat)}
        send = mean([s.send_s * 1e6 for s in ok])
        recv = mean([s.recv_s * 1e6 for s in ok])
    else:
        latency = {f"p{q}": math.nan for q in PERCENTILES} | {"avg": math.nan, "min": math.nan, "max": math.nan}
        send = recv = math.nan
    server: dict[str, float] = {}
    for key in SERVER_TIMING_KEYS:
        vals = [s.server[key] * 1e6 for s in ok if key in s.server]
        if vals:
            server[key] = mean(vals)
    source = "response" if server else "none"
    if not server and server_stats_us:
        server, source = dict(server_stats_us), "v2-stats"
    net = latency["avg"] - send - recv - server.get("queue", 0.0) - server.get("preprocess", 0.0)
    net -= server.get("compute", 0.0) + server.get("postprocess", 0.0)
    return LoadPoint(
        mode=mode,
        concurrency=concurrency,
        request_rate=request_rate,
        protocol=protocol,
        description=spec.description if spec else "",
        measured_s=wall_s,
        windows=windows,
        stable=stable,
        requests=len(ok),
        inferences_per_second=sum(s.images for s in ok) / wall_s,
        requests_per_second=len(ok) / wall_s,
        latency_us=latency,
        client_send_us=send,
        client_recv_us=recv,
        server_us=server,
        server_timing_source=source,  # type: ignore[arg-type]
        network_server_send_recv_us=net,
        errors_by_status=dict(errors),
        client_cpu_cores=cpu_s / wall_s,
        # zero CPU for a server that answered means its processes were not found: unknown, not free
        server_cpu_cores=server_cpu_s / wall_s if server_cpu_s else None,
        server_cpu_us_per_inference=server_cpu_s / sum(s.images for s in ok) * 1e6 if server_cpu_s and ok else None,
        client_cpu_us_per_request=(cpu_s / len(samples) * 1e6) if samples else math.nan,
        server_mean_batch_size=server_mean_batch_size,
        server_loop_cpu_us_per_inference=(server_loop_cpu_s / sum(s.images for s in ok) * 1e6
                                          if server_loop_cpu_s is not None and ok else None),
    )
