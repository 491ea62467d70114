"""Soak runner: hold ~80 % of the measured sustainable rate for a long time and watch errors, memory, p99.

Outside CI (10 minutes, the issue's bounded soak):

    python tests/reliability/soak.py --minutes 10 --url http://127.0.0.1:8000 --model demo --pid <server pid>
    python tests/reliability/soak.py --minutes 10 --repository model_repository --model demo   # starts a server

Phases: every connection of the load generator held busy for a moment (the server's memory high-water mark is
reached before anything is measured), a closed-loop probe measures the sustainable rate (requests/s at
`--probe-concurrency`), an open-loop check at `--fraction` of it confirms the server keeps up (else the estimate
steps down by 25 %, up to 4 times), then an open-loop Poisson load at `--fraction` of it runs for the whole
duration. The first `--warmup-s` are warm-up; after them, per window of `--window-s`: requests, errors, p50/p99
and the server's resident
memory (VmRSS, when its pid is known). Exit status 1 when any request failed or memory grew more than
`--max-rss-growth` (default 5 %): the last window's median over the first window's peak, after warm-up.
Note: with a model that computes in ~1 ms the HTTP layer, not the model, is the limit, and an open-loop load
sharing the server's cores can fall behind the closed-loop probe's rate (hence the open-loop check). `--json-out` writes
the report. The CI version (test_reliability_soak.py) runs the same code for 60 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_load import Outcome, Request, closed_loop, make_session, open_loop, throughput  # noqa: E402  (after the sys.path setup)


@dataclass
class Window:
    start_s: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rss_mb: float | None  # median of the window's samples
    rss_max_mb: float | None


@dataclass
class SoakReport:
    url: str
    model: str
    sustainable_rps: float
    offered_rps: float
    achieved_rps: float
    duration_s: float
    warmup_s: float
    requests: int
    errors: int
    error_samples: list[str] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    rss_growth: float | None = None  # fraction: last window's median vs the first window's peak (after warm-up)
    p99_first_ms: float = float("nan")
    p99_last_ms: float = float("nan")

    @property
    def p99_drift(self) -> float:
        return self.p99_last_ms / self.p99_first_ms - 1 if self.p99_first_ms > 0 else float("nan")

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "p99_drift": self.p99_drift}


def classify_request(base_url: str, model: str) -> Request:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB").save(buf, "JPEG", quality=90)
    return Request("POST", f"{base_url}/v1/models/{model}/classify?top_k=5", buf.getvalue(),
                   {"content-type": "image/jpeg"})


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


#: the load generator's connections: the most requests in flight at the server
PEAK_CONNECTIONS = 64
#: how long the warm-up holds every connection busy
PEAK_S = 3.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def run_soak_async(base_url: str, model: str, duration_s: float, *, pid: int | None = None,
                         fraction: float = 0.8, warmup_s: float = 10.0, window_s: float = 10.0,
                         probe_s: float = 5.0, probe_concurrency: int = 8, log=print) -> SoakReport:
    req = classify_request(base_url, model)
    async with make_session(connections=PEAK_CONNECTIONS, timeout_s=60) as session:
        await closed_loop(session, lambda i: req, 2, 1.0)
        # The most requests the soak can ever hold in flight is the session's connections: hold that many for a
        # moment first, so the server's memory high-water mark (allocator arenas, buffers of that many requests)
        # is reached before any window is measured. A stall later (a noisy neighbour) that backs the open loop
        # up to it then adds nothing; what still grows is what a leak looks like.
        await closed_loop(session, lambda i: req, PEAK_CONNECTIONS, PEAK_S)
        probe = await closed_loop(session, lambda i: req, probe_concurrency, probe_s)
        bad = [o for o in probe if o.status != 200]
        if bad:
            raise RuntimeError(f"the probe failed: {bad[0].status} {bad[0].error or bad[0].body[:200]!r}")
        sustainable = throughput(probe)
        closed_p50 = _pct([o.latency for o in probe], 50)
        # A closed loop can overstate what an open (Poisson) load is served at when the HTTP layer and the
        # load generator share the cores: check the soak rate open-loop and step down until it keeps up.
        for _ in range(4):
            rate = fraction * sustainable
            check = await open_loop(session, lambda i: req, rate, probe_s, poisson=True, seed=7)
            keeps_up = (all(o.status == 200 for o in check) and throughput(check) >= 0.9 * rate
                        and _pct([o.latency for o in check], 50) <= max(closed_p50, 0.02))
            if keeps_up:
                break
            log(f"open-loop check at {rate:.1f} req/s fell behind; stepping down")
            sustainable *= 0.75
            await asyncio.sleep(2.0)  # let the backlog drain
        rate = fraction * sustainable
        log(f"sustainable {sustainable:.1f} req/s (closed loop at concurrency {probe_concurrency}, checked open-loop); "
            f"soaking at {rate:.1f} req/s for {duration_s:.0f}s (warm-up {warmup_s:.0f}s)")
        rss_samples: list[tuple[float, float]] = []
        start = time.monotonic()

        async def sample_rss() -> None:
            while True:
                value = rss_mb(pid)
                if value is not None:
                    rss_samples.append((time.monotonic() - start, value))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_rss())
        try:
            outcomes = await open_loop(session, lambda i: req, rate, duration_s, poisson=True, seed=42)
        finally:
            sampler.cancel()
    return build_report(base_url, model, outcomes, start, rss_samples, sustainable, rate, duration_s, warmup_s,
                        window_s)


def build_report(base_url: str, model: str, outcomes: list[Outcome], start: float,
                 rss_samples: list[tuple[float, float]], sustainable: float, rate: float, duration_s: float,
                 warmup_s: float, window_s: float) -> SoakReport:
    errors = [o for o in outcomes if o.status != 200]
    report = SoakReport(base_url, model, round(sustainable, 2), round(rate, 2), round(throughput(outcomes), 2),
                        duration_s, warmup_s, len(outcomes), len(errors),
                        [f"{o.status} {o.error or o.body[:120]!r}" for o in errors[:5]])
    t = warmup_s
    while t < duration_s - 1e-9:
        end = min(t + window_s, duration_s)
        inside = [o for o in outcomes if t <= o.start - start < end]
        lat = [o.latency * 1000 for o in inside if o.status == 200]
        rss = [v for s, v in rss_samples if t <= s < end]
        report.windows.append(Window(round(t, 1), len(inside), sum(o.status != 200 for o in inside),
                                     round(_pct(lat, 50), 2), round(_pct(lat, 99), 2),
                                     round(statistics.median(rss), 1) if rss else None,
                                     round(max(rss), 1) if rss else None))
        t = end
    measured = [w for w in report.windows if w.requests]
    if measured:
        report.p99_first_ms, report.p99_last_ms = measured[0].p99_ms, measured[-1].p99_ms
        # growth beyond the level the first window already reached is what a leak looks like; a transient
        # backlog in the first window (noisy neighbours) raises its peak, not the later windows' median
        first_rss, last_rss = measured[0].rss_max_mb, measured[-1].rss_mb
        if first_rss and last_rss:
            report.rss_growth = round(last_rss / first_rss - 1, 4)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server")
    target.add_argument("--repository", type=Path, help="start a server on this repository (loopback, free port)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--pid", type=int, help="the running server's pid, to watch its memory (with --url)")
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float)
    duration.add_argument("--seconds", type=float)
    parser.add_argument("--fraction", type=float, default=0.8, help="share of the sustainable rate to offer")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--probe-s", type=float, default=10.0)
    parser.add_argument("--probe-concurrency", type=int, default=8)
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 10)
    if seconds <= args.warmup_s:
        parser.error("the duration must be longer than the warm-up")

    server = None
    url, pid = args.url, args.pid
    if args.repository is not None:
        here = Path(__file__).resolve()
        sys.path[:0] = [str(here.parents[1]), str(here.parents[2])]  # tests/ (the launcher) and the root (bench/)
        from service_server import start_server

        server = start_server(args.repository, Path(tempfile.mkdtemp(prefix="vitserve-soak-")), "--models", args.model)
        url, pid = server.base_url, server.proc.pid
        print(f"started {url} (pid {pid}, log {server.log_path})")
    try:
        report = asyncio.run(run_soak_async(url.rstrip("/"), args.model, seconds, pid=pid, fraction=args.fraction,
                                            warmup_s=args.warmup_s, window_s=args.window_s, probe_s=args.probe_s,
                                            probe_concurrency=args.probe_concurrency))
    finally:
        if server is not None:
            print(f"server exited with {server.stop()}")
    print(f"{'window':>8} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>8}")
    for w in report.windows:
        rss = f"{w.rss_mb:8.1f}" if w.rss_mb is not None else f"{'-':>8}"
        print(f"{w.start_s:8.0f} {w.requests:9d} {w.errors:7d} {w.p50_ms:8.2f} {w.p99_ms:8.2f} {rss}")
    growth = "n/a (no pid)" if report.rss_growth is None else f"{report.rss_growth * 100:+.2f} %"
    print(f"requests {report.requests}, errors {report.errors}, achieved {report.achieved_rps} req/s of "
          f"{report.offered_rps} offered; RSS growth after warm-up {growth}; p99 {report.p99_first_ms} -> "
          f"{report.p99_last_ms} ms ({report.p99_drift * 100:+.1f} %)")
    if args.json_out:
        args.json_out.write_text(json.dumps(report.to_json(), indent=1))
    ok = report.errors == 0 and (report.rss_growth is None or report.rss_growth <= args.max_rss_growth)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
