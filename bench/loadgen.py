"""Asynchronous HTTP load generator: closed-loop concurrency sweeps and open-loop Poisson rates.

Why its own generator: the figures must come out in perf_analyzer's terms (so they compare with
Triton's tooling) while driving vitserve's REST image endpoint as well as the v2 binary
protocol, and the client must be measured too, because on a small machine it shares the cores
with the server. Design choices:

- Bodies are prebuilt (bench/payloads.py) and sent by bench/client.py; results are bench/results.py's
  `Sample`s reduced to `LoadPoint`s; server timings are parsed by bench/timings.py. This module is the
  measurement itself: the window loop, the closed and open loops, and the sweep.
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
import math
import random
import time
from collections.abc import Callable, Sequence

from bench.client import Sender, Snapshot, open_session, stats_snapshot
from bench.grpc_client import GrpcSender, GrpcStreamSender, open_channel
from bench.measure import Client, MeasureConfig, Progress, ServerReading, stderr_progress
from bench.payloads import RequestSpec
from bench.procs import group_cpu_seconds, main_thread_cpu_seconds
from bench.results import LoadPoint, Sample, summarise
from bench.stats import Window, is_stable, percentile
from bench.timings import mean_batch_size, stats_delta

__all__ = ["Client", "MeasureConfig", "ServerReading", "closed_loop", "open_loop", "run", "sweep", "stderr_progress"]

async def _measure(
    samples: list[Sample],
    cfg: MeasureConfig,
    label: str,
    progress: Progress | None,
    snapshot: Snapshot | None = None,
    server_pgid: int | None = None,
) -> tuple[list[Sample], float, float, int, bool, dict[str, float] | None, float | None, float | None,
           float | None]:
    """Run the window loop over the growing `samples` list.

    Returns (reported samples, wall, cpu, windows, stable, server stats per request over the reported windows,
    server CPU seconds, images per executed batch, CPU seconds of the server's main thread).
    """
    await asyncio.sleep(cfg.warmup_s)
    waited = cfg.warmup_s
    while not samples and waited < cfg.max_window_s:  # a slow model: warm up until something has completed
        await asyncio.sleep(0.1)
        waited += 0.1
    snaps: list[dict[str, float]] = [await snapshot()] if snapshot else []
    server_cpu: list[float] = [group_cpu_seconds(server_pgid)] if server_pgid else []
    loop_cpu: list[float | None] = [main_thread_cpu_seconds(server_pgid)] if server_pgid else []
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
            loop_cpu.append(main_thread_cpu_seconds(server_pgid))
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
    loop0, loop1 = (loop_cpu[first], loop_cpu[-1]) if server_pgid else (None, None)
    loop_cpu_s = loop1 - loop0 if loop0 is not None and loop1 is not None else None
    return reported, wall, cpu, len(windows), stable, server, server_cpu_s, batch, loop_cpu_s


AnySender = Sender | GrpcSender | GrpcStreamSender

#: starts the load on a sender, appending to the samples; returns what to cancel when the measurement ends
Load = Callable[[AnySender, list[Sample]], Callable[[], list["asyncio.Task[None]"]]]


async def _drive(base_url: str, spec: RequestSpec, cfg: MeasureConfig, reading: ServerReading, *, connections: int,
                 label: str, load: Load, progress: Progress | None, **point: object) -> LoadPoint:
    """Open a session, start `load`, measure until done, stop the load, and reduce the samples to a LoadPoint.

    With `reading.grpc_target` the requests are gRPC calls on one channel (bench/grpc_client.py); the HTTP
    session then only reads the server's statistics."""
    samples: list[Sample] = []
    channel = open_channel(reading.grpc_target) if reading.grpc_target else None
    async with open_session(base_url, connections, cfg.request_timeout_s) as session:  # type: ignore[attr-defined]
        sender: AnySender = Sender(session, spec, reading.parse_json)
        if channel is not None:
            sender = (GrpcStreamSender(channel, spec, cfg.request_timeout_s) if reading.grpc_stream
                      else GrpcSender(channel, spec, cfg.request_timeout_s))
        running = load(sender, samples)
        try:
            reported, wall, cpu, n, stable, stats, server_cpu, batch, loop_cpu = await _measure(
                samples, cfg, label, progress, stats_snapshot(session, reading.stats_path), reading.server_pgid
            )
        finally:
            tasks = running()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(sender, GrpcStreamSender):
                await sender.close()
            if channel is not None:
                await channel.close()
    return summarise(
        reported, wall, cpu, windows=n, stable=stable, spec=spec, protocol=reading.protocol, server_stats_us=stats,
        server_cpu_s=server_cpu, server_mean_batch_size=batch, server_loop_cpu_s=loop_cpu, **point,  # type: ignore[arg-type]
    )


async def closed_loop(
    base_url: str, spec: RequestSpec, concurrency: int, cfg: MeasureConfig | None = None, *,
    reading: ServerReading = ServerReading(), progress: Progress | None = None,
) -> LoadPoint:
    """Keep `concurrency` requests outstanding until the measurement is done."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")

    def load(sender: AnySender, samples: list[Sample]) -> Callable[[], list[asyncio.Task[None]]]:
        async def worker() -> None:
            while True:
                samples.append(await sender.send())

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        return lambda: tasks

    return await _drive(base_url, spec, cfg or MeasureConfig(), reading, connections=concurrency + 1,
                        label=f"c={concurrency}", load=load, progress=progress, mode="concurrency",
                        concurrency=concurrency)


async def open_loop(
    base_url: str, spec: RequestSpec, rate: float, cfg: MeasureConfig | None = None, *,
    reading: ServerReading = ServerReading(), max_outstanding: int = 1024, seed: int = 0,
    progress: Progress | None = None,
) -> LoadPoint:
    """Start requests at Poisson arrival times of mean `rate` per second; latency counts from the scheduled start."""
    if rate <= 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    rng = random.Random(seed)

    def load(sender: AnySender, samples: list[Sample]) -> Callable[[], list[asyncio.Task[None]]]:
        inflight: set[asyncio.Task[None]] = set()

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
                    samples.append(Sample(start=next_t, end=time.perf_counter(), status=-1,
                                          images=spec.images_per_request))
                    continue
                t = asyncio.create_task(one(next_t))
                inflight.add(t)
                t.add_done_callback(inflight.discard)

        gen = asyncio.create_task(arrivals())
        return lambda: [gen, *inflight]

    return await _drive(base_url, spec, cfg or MeasureConfig(), reading, connections=max_outstanding + 1,
                        label=f"rate={rate:g}/s", load=load, progress=progress, mode="rate", request_rate=rate)


def run(coro: object, *, plain_asyncio: bool = False) -> object:
    """Run a coroutine on uvloop when installed (lower client overhead), else asyncio's default loop
    (`plain_asyncio`: always; grpc.aio supports only asyncio's own loop)."""
    if plain_asyncio:
        return asyncio.run(coro)  # type: ignore[arg-type]
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
    client: Client = "python",
    wrk_threads: int = 1,
    grpc_target: str | None = None,
) -> list[LoadPoint]:
    """Closed-loop points for each concurrency, then open-loop points for each rate.

    client "wrk" (bench/wrk.py, closed loop only) measures with the C load generator instead of this one;
    client "grpc" sends `spec` (a bench.grpc_client.infer_message) as gRPC calls to `grpc_target` (host:port),
    reading the server's statistics from `base_url` over HTTP; "grpc-stream" as messages on one ModelStreamInfer
    stream.
    """
    if not concurrencies and not rates:
        raise ValueError("give at least one concurrency or one request rate")
    grpc = client in ("grpc", "grpc-stream")
    if grpc != (grpc_target is not None):
        raise ValueError("a gRPC client and grpc_target go together")

    reading = ServerReading(protocol=protocol, stats_path=stats_path, server_pgid=server_pgid,
                            grpc_target=grpc_target, grpc_stream=client == "grpc-stream")
    if client == "wrk":
        from bench.wrk import closed_loop_wrk

        if rates:
            raise ValueError("wrk measures closed-loop concurrency only: no request rates with --client wrk")
        points = []
        for c in concurrencies:
            if progress:
                progress(f"concurrency {c} (wrk, {wrk_threads} thread(s)): {spec.description}")
            points.append(closed_loop_wrk(base_url, spec, c, cfg, reading=reading, threads=wrk_threads,
                                          progress=progress))
            if progress:
                progress(_point_line(points[-1]))
        return points

    async def _all() -> list[LoadPoint]:
        points: list[LoadPoint] = []
        runs = [(f"concurrency {c}", closed_loop, c) for c in concurrencies]
        runs += [(f"rate {r:g}/s", open_loop, r) for r in rates]
        for label, loop, level in runs:
            if progress:
                progress(f"{label}: {spec.description}")
            p = await loop(base_url, spec, level, cfg, reading=reading, progress=progress)
            points.append(p)
            if progress:
                progress(_point_line(p))
        return points

    return run(_all(), plain_asyncio=grpc)  # type: ignore[return-value]


def _point_line(p: LoadPoint) -> str:
    lat = p.latency_us
    return (
        f"  => {p.inferences_per_second:.1f} infer/s, p50 {lat['p50'] / 1000:.2f} ms, p99 {lat['p99'] / 1000:.2f} ms, "
        f"errors {p.errors_by_status or 0}, {p.client} client CPU {p.client_cpu_cores:.2f} cores "
        f"({p.client_cpu_us_per_request:.0f} us/request)"
        + (f", server CPU {p.server_cpu_cores:.2f} cores ({p.server_cpu_us_per_inference:.0f} us/inference)"
           if p.server_cpu_cores is not None and p.server_cpu_us_per_inference is not None else "")
        + f", {'stable' if p.stable else 'UNSTABLE'}"
    )
