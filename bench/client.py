"""The load generator's HTTP client: one aiohttp session per measurement and a sender of prebuilt requests.

Bodies are prebuilt (bench/payloads.py), so a request costs the client one write and one read; a trace
hook records when the body went out (the client-send part of the latency), and each response's server
timings are parsed as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from bench.payloads import RequestSpec
from bench.results import Sample
from bench.timings import parse_json_timings, parse_server_timing, parse_v2_stats

__all__ = ["Sender", "Snapshot", "open_session", "stats_snapshot"]

#: reads the server's cumulative statistics (see bench.timings.parse_v2_stats)
Snapshot = Callable[[], Awaitable[dict[str, float]]]


class Sender:
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
        except (TimeoutError, aiohttp.ClientError, OSError):
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


def open_session(base_url: str, limit: int, timeout_s: float) -> object:
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


def stats_snapshot(session: object, stats_path: str | None) -> Snapshot | None:
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
