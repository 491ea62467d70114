"""Asynchronous HTTP load generator: closed-loop concurrency sweeps and open-loop Poisson rates.

Why its own generator: the figures must come out in perf_analyzer's terms (so they compare with
Triton's tooling) while driving vitserve's REST image endpoint as well as the v2 binary
protocol, and the client must be measured too, because on a small machine it shares the cores
with the server. Design choices:

- Bodies are prebuilt (bench/payloads.py): a request costs the client one write and one read.
- Closed loop: `concurrency` workers, each sending its next request when the previous answers.
  Open loop: requests start at Poisson arrival times whatever the server does, and latency is
  measured from the *scheduled* start, so a stalled server cannot hide its queueing
  (no coordinated omission).
- Measurement in windows after a warm-up; done when the last `stability_windows` windows agree
  within `tolerance` on throughput and the chosen latency percentile (perf_analyzer's rule), or
  after `max_windows` (reported as unstable), or for a fixed duration.
- The server's own queue/preprocess/compute split is read from each response: the
  `Server-Timing` header (`name;dur=<ms>`), else a JSON `timings` object.
- The client's CPU time (process_time) is recorded per window, so every result says how much
  of a core the generator itself used.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from bench.payloads import RequestSpec
from bench.procs import group_cpu_seconds
from bench.stats import PERCENTILES, Window, is_stable, mean, percentile

Mode = Literal["concurrency", "rate"]
Progress = Callable[[str], None]

SERVER_TIMING_KEYS = ("queue", "preprocess", "compute", "postprocess", "total")


def stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def parse_server_timing(value: str) -> dict[str, float]:
    """Parse a `Server-Timing` header (`queue;dur=1.2, compute;dur=3.4`, dur in ms) into seconds."""
    out: dict[str, float] = {}
    for part in value.split(","):
        items = [p.strip() for p in part.split(";")]
        if not items or not items[0]:
            continue
        name = items[0]
        for item in items[1:]:
            if item.startswith("dur="):
                try:
                    out[name] = float(item[4:].strip('"')) / 1000.0
                except ValueError:
                    pass
    return out


def parse_json_timings(body: bytes) -> dict[str, float]:
    """Server timings from a JSON body's `timings` object; keys ending in `_ms` are milliseconds, else seconds."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    timings = doc.get("timings") if isinstance(doc, dict) else None
    if not isinstance(timings, dict):
        return {}
    out: dict[str, float] = {}
    for key, val in timings.items():
        if not isinstance(val, (int, float)):
            continue
        if key.endswith("_ms"):
            out[key[:-3]] = float(val) / 1000.0
        elif key.endswith("_s"):
            out[key[:-2]] = float(val)
        else:
            out[key] = float(val)
    return out


_STATS_KEYS = {"queue": "queue", "compute_input": "preprocess", "compute_infer": "compute", "compute_output": "postprocess"}


def parse_v2_stats(doc: object) -> dict[str, float]:
    """Cumulative counters from a Triton-shaped `/v2/models/{m}/stats` answer: `success` count and ns per stage."""
    out: dict[str, float] = {}
    if not isinstance(doc, dict):
        return out
    for model in doc.get("model_stats", []) or []:
        inf = (model or {}).get("inference_stats") or {}
        for key in ("inference_count", "execution_count"):  # images computed, batches executed
            out[key] = out.get(key, 0.0) + float((model or {}).get(key, 0) or 0)
        for key in ("success", *_STATS_KEYS):
            entry = inf.get(key) or {}
            out[f"{key}.count"] = out.get(f"{key}.count", 0.0) + float(entry.get("count", 0) or 0)
            out[f"{key}.ns"] = out.get(f"{key}.ns", 0.0) + float(entry.get("ns", 0) or 0)
    return out


def stats_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean server time per request (usec) by stage between two stats snapshots, as perf_analyzer computes it."""
    out: dict[str, float] = {}
    for key, name in _STATS_KEYS.items():
        count = after.get(f"{key}.count", 0.0) - before.get(f"{key}.count", 0.0)
        ns = after.get(f"{key}.ns", 0.0) - before.get(f"{key}.ns", 0.0)
        if count > 0:
            out[name] = ns / count / 1000.0
    return out


def mean_batch_size(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Images per executed batch between two stats snapshots (None when no batch ran or no statistics)."""
    batches = after.get("execution_count", 0.0) - before.get("execution_count", 0.0)
    images = after.get("inference_count", 0.0) - before.get("inference_count", 0.0)
    return images / batches if batches > 0 else None


class LoadPoint(BaseModel):
    """The result of one concurrency level or one arrival rate, perf_analyzer's figures plus ours."""

    mode: Mode
    concurrency: int | None = None
    request_rate: float | None = None
    protocol: str = ""
    description: str = ""
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
            "Client Send": round(self.client_send_us),
            "Network+Server Send/Recv": round(self.network_server_send_recv_us),
            "Server Queue": round(s.get("queue", 0.0)),
            "Server Compute Input": round(s.get("preprocess", 0.0)),
            "Server Compute Infer": round(s.get("compute", 0.0)),
            "Server Compute Output": round(s.get("postprocess", 0.0)),
            "Client Recv": round(self.client_recv_us),
            "p50 latency": round(self.latency_us["p50"]),
            "p90 latency": round(self.latency_us["p90"]),
            "p95 latency": round(self.latency_us["p95"]),
            "p99 latency": round(self.latency_us["p99"]),
            "Avg latency": round(self.latency_us["avg"]),
        }


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
) -> LoadPoint:
    """Reduce the samples of the reported windows to a LoadPoint."""
    if wall_s <= 0:
        raise ValueError("measurement wall time must be positive")
    ok = [s for s in samples if 200 <= s.status < 300]
    errors = Counter(("conn" if s.status == 0 else "client_backlog" if s.status < 0 else str(s.status)) for s in samples if not 200 <= s.status < 300)
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
    )


class _Sender:
    """Sends one prebuilt request on a shared aiohttp session and records a Sample."""

    def __init__(self, session: object, spec: RequestSpec, parse_json: bool) -> None:
        self.session = session
        self.spec = spec
        self.parse_json = parse_json

    async def send(self, start: float | None = None) -> Sample:
        import aiohttp

        t0 = time.perf_counter() if start is None else start
        ctx: dict[str, float] = {}
        try:
            async with self.session.post(  # type: ignore[attr-defined]
                self.spec.path, data=self.spec.body, headers=self.spec.headers, trace_request_ctx=ctx
            ) as resp:
                t_headers = time.perf_counter()
                body = await resp.read()
                server: dict[str, float] = {}
                st = resp.headers.get("Server-Timing")
                if st:
                    server = parse_server_timing(st)
                elif self.parse_json and resp.content_type == "application/json":
                    server = parse_json_timings(body)
                t1 = time.perf_counter()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            t1 = time.perf_counter()
            return Sample(start=t0, end=t1, status=0, images=self.spec.images_per_request)
        sent = ctx.get("sent", t0)
        return Sample(
            start=t0,
            end=t1,
            status=status,
            send_s=max(0.0, sent - t0),
            recv_s=t1 - t_headers,
            server=server,
            images=self.spec.images_per_request,
        )


def _trace_config() -> object:
    import aiohttp

    async def on_chunk_sent(session: object, ctx: object, params: object) -> None:
        req_ctx = getattr(ctx, "trace_request_ctx", None)
        if isinstance(req_ctx, dict):
            req_ctx["sent"] = time.perf_counter()

    tc = aiohttp.TraceConfig()
    tc.on_request_chunk_sent.append(on_chunk_sent)
    return tc


def _session(base_url: str, limit: int, timeout_s: float) -> object:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60)
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trace_configs=[_trace_config()],  # type: ignore[list-item]
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),  # no gzip: perf_analyzer asks for none either
    )


Snapshot = Callable[[], Awaitable[dict[str, float]]]


async def _measure(
    samples: list[Sample],
    cfg: MeasureConfig,
    label: str,
    progress: Progress | None,
    snapshot: Snapshot | None = None,
    server_pgid: int | None = None,
) -> tuple[list[Sample], float, float, int, bool, dict[str, float] | None, float | None, float | None]:
    """Run the window loop over the growing `samples` list.

    Returns (reported samples, wall, cpu, windows, stable, server stats per request over the reported windows,
    server CPU seconds, images per executed batch).
    """
    await asyncio.sleep(cfg.warmup_s)
    waited = cfg.warmup_s
    while not samples and waited < cfg.max_window_s:  # a slow model: warm up until something has completed
        await asyncio.sleep(0.1)
        waited += 0.1
    snaps: list[dict[str, float]] = [await snapshot()] if snapshot else []
    server_cpu: list[float] = [group_cpu_seconds(server_pgid)] if server_pgid else []
    windows: list[Window] = []
    bounds: list[tuple[int, int, float, float]] = []  # sample index range, wall, cpu per window
    idx = len(samples)
    if cfg.fixed_duration_s is not None:
        n_windows = max(1, math.ceil(cfg.fixed_duration_s / cfg.window_s))
        window_s = cfg.fixed_duration_s / n_windows
    else:
        n_windows = cfg.max_windows
        window_s = cfg.window_s
    stable = False
    # windows are contiguous: the next starts where the last ended (snapshot time included), so no
    # completion falls between two windows and wall time adds up
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_windows):
        await asyncio.sleep(max(0.0, window_s - (time.perf_counter() - w0)))
        w1, c1 = time.perf_counter(), time.process_time()
        end_idx = len(samples)
        chunk = samples[idx:end_idx]
        ok = [(s.end - s.start) * 1e6 for s in chunk if 200 <= s.status < 300]
        lat = percentile(ok, cfg.stability_percentile) if ok else math.inf
        windows.append(Window(duration_s=w1 - w0, count=len(ok), throughput=len(ok) / (w1 - w0), latency_us=lat))
        bounds.append((idx, end_idx, w1 - w0, c1 - c0))
        idx = end_idx
        if snapshot:
            snaps.append(await snapshot())
        if server_pgid:
            server_cpu.append(group_cpu_seconds(server_pgid))
        if cfg.fixed_duration_s is None and len(ok) < cfg.min_requests_per_window and window_s < cfg.max_window_s:
            window_s = min(cfg.max_window_s, window_s * 2)
        if progress:
            errs = len(chunk) - len(ok)
            progress(
                f"  {label} window {len(windows)}: {len(ok) / (w1 - w0):8.1f} req/s  "
                f"p{cfg.stability_percentile} {lat / 1000:8.2f} ms  errors {errs}"
            )
        if cfg.fixed_duration_s is None and is_stable(windows, cfg.stability_windows, cfg.tolerance):
            stable = True
            break
        w0, c0 = w1, c1
    first = 0
    if cfg.fixed_duration_s is not None:
        stable = is_stable(windows, min(cfg.stability_windows, len(windows)), cfg.tolerance)
    elif stable:
        first = len(bounds) - cfg.stability_windows
    use = bounds[first:]
    reported = samples[use[0][0] : use[-1][1]]
    wall = sum(b[2] for b in use)
    cpu = sum(b[3] for b in use)
    server = stats_delta(snaps[first], snaps[-1]) if snapshot else None
    server_cpu_s = server_cpu[-1] - server_cpu[first] if server_pgid else None
    batch = mean_batch_size(snaps[first], snaps[-1]) if snapshot else None
    return reported, wall, cpu, len(windows), stable, server, server_cpu_s, batch


def _stats_snapshot(session: object, stats_path: str | None) -> Snapshot | None:
    if not stats_path:
        return None

    async def snap() -> dict[str, float]:
        try:
            async with session.get(stats_path) as resp:  # type: ignore[attr-defined]
                if resp.status != 200:
                    return {}
                return parse_v2_stats(await resp.json(content_type=None))
        except Exception:  # statistics are optional; a server without them just has no split
            return {}

    return snap


async def closed_loop(
    base_url: str,
    spec: RequestSpec,
    concurrency: int,
    cfg: MeasureConfig | None = None,
    *,
    protocol: str = "",
    parse_json: bool = True,
    stats_path: str | None = None,
    server_pgid: int | None = None,
    progress: Progress | None = None,
) -> LoadPoint:
    """Keep `concurrency` requests outstanding until the measurement is done."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    cfg = cfg or MeasureConfig()
    samples: list[Sample] = []
    stop = asyncio.Event()
    async with _session(base_url, concurrency + 1, cfg.request_timeout_s) as session:  # type: ignore[attr-defined]
        sender = _Sender(session, spec, parse_json)

        async def worker() -> None:
            while not stop.is_set():
                samples.append(await sender.send())

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            reported, wall, cpu, n, stable, stats, server_cpu, batch = await _measure(
                samples, cfg, f"c={concurrency}", progress, _stats_snapshot(session, stats_path), server_pgid
            )
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return summarise(
        reported, wall, cpu, mode="concurrency", windows=n, stable=stable, concurrency=concurrency, spec=spec,
        protocol=protocol, server_stats_us=stats, server_cpu_s=server_cpu, server_mean_batch_size=batch,
    )


async def open_loop(
    base_url: str,
    spec: RequestSpec,
    rate: float,
    cfg: MeasureConfig | None = None,
    *,
    protocol: str = "",
    parse_json: bool = True,
    max_outstanding: int = 1024,
    seed: int = 0,
    stats_path: str | None = None,
    server_pgid: int | None = None,
    progress: Progress | None = None,
) -> LoadPoint:
    """Start requests at Poisson arrival times of mean `rate` per second; latency counts from the scheduled start."""
    if rate <= 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    cfg = cfg or MeasureConfig()
    samples: list[Sample] = []
    rng = random.Random(seed)
    inflight: set[asyncio.Task[None]] = set()
    async with _session(base_url, max_outstanding + 1, cfg.request_timeout_s) as session:  # type: ignore[attr-defined]
        sender = _Sender(session, spec, parse_json)

        async def one(at: float) -> None:
            samples.append(await sender.send(start=at))

        async def arrivals() -> None:
            next_t = time.perf_counter()
            while True:
                next_t += rng.expovariate(rate)
                delay = next_t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(inflight) >= max_outstanding:
                    samples.append(Sample(start=next_t, end=time.perf_counter(), status=-1, images=spec.images_per_request))
                    continue
                t = asyncio.create_task(one(next_t))
                inflight.add(t)
                t.add_done_callback(inflight.discard)

        gen = asyncio.create_task(arrivals())
        try:
            reported, wall, cpu, n, stable, stats, server_cpu, batch = await _measure(
                samples, cfg, f"rate={rate:g}/s", progress, _stats_snapshot(session, stats_path), server_pgid
            )
        finally:
            gen.cancel()
            for t in list(inflight):
                t.cancel()
            await asyncio.gather(gen, *inflight, return_exceptions=True)
    return summarise(
        reported, wall, cpu, mode="rate", windows=n, stable=stable, request_rate=rate, spec=spec, protocol=protocol,
        server_stats_us=stats, server_cpu_s=server_cpu, server_mean_batch_size=batch,
    )


def run(coro: object) -> object:
    """Run a coroutine on uvloop when installed (lower client overhead), else asyncio's default loop."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def sweep(
    base_url: str,
    spec: RequestSpec,
    *,
    concurrencies: Sequence[int] = (),
    rates: Sequence[float] = (),
    cfg: MeasureConfig | None = None,
    protocol: str = "",
    stats_path: str | None = None,
    server_pgid: int | None = None,
    progress: Progress | None = stderr_progress,
) -> list[LoadPoint]:
    """Closed-loop points for each concurrency, then open-loop points for each rate."""
    if not concurrencies and not rates:
        raise ValueError("give at least one concurrency or one request rate")

    async def _all() -> list[LoadPoint]:
        points: list[LoadPoint] = []
        runs = [(f"concurrency {c}", closed_loop, c) for c in concurrencies]
        runs += [(f"rate {r:g}/s", open_loop, r) for r in rates]
        for label, loop, level in runs:
            if progress:
                progress(f"{label}: {spec.description}")
            p = await loop(
                base_url, spec, level, cfg, protocol=protocol, stats_path=stats_path, server_pgid=server_pgid,
                progress=progress,
            )
            points.append(p)
            if progress:
                progress(_point_line(p))
        return points

    return run(_all())  # type: ignore[return-value]


def _point_line(p: LoadPoint) -> str:
    lat = p.latency_us
    return (
        f"  => {p.inferences_per_second:.1f} infer/s, p50 {lat['p50'] / 1000:.2f} ms, p99 {lat['p99'] / 1000:.2f} ms, "
        f"errors {p.errors_by_status or 0}, client CPU {p.client_cpu_cores:.2f} cores"
        + (f", server CPU {p.server_cpu_cores:.2f} cores ({p.server_cpu_us_per_inference:.0f} us/inference)"
           if p.server_cpu_cores is not None and p.server_cpu_us_per_inference is not None else "")
        + f", {'stable' if p.stable else 'UNSTABLE'}"
    )
