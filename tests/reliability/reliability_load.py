"""A small asyncio load generator (aiohttp) for the overload, drain, reload and soak tests.

Closed loop (N workers, each sends its next request when the last one is answered) measures what the
server sustains; open loop (requests start on a fixed or Poisson schedule, whatever the answers)
offers a load independent of the server's speed, which is how overload really arrives.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    start: float  # monotonic
    latency: float  # seconds
    status: int  # 0 = transport error
    retry_after: str | None = None
    error: str | None = None
    body: bytes = b""

    @property
    def end(self) -> float:
        return self.start + self.latency


MakeRequest = Callable[[int], Request]


async def send(session: aiohttp.ClientSession, req: Request, keep_body: bool = False) -> Outcome:
    start = time.monotonic()
    try:
        async with session.request(req.method, req.url, data=req.data, headers=req.headers) as resp:
            body = await resp.read()
            return Outcome(start, time.monotonic() - start, resp.status, resp.headers.get("Retry-After"),
                           None if resp.status < 500 or resp.status in (503, 504)
                           else body[:300].decode(errors="replace"),
                           body if keep_body or resp.status != 200 else b"")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Outcome(start, time.monotonic() - start, 0, None, f"{type(exc).__name__}: {exc}")


def make_session(connections: int = 512, timeout_s: float = 60.0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


async def closed_loop(session: aiohttp.ClientSession, make: MakeRequest, concurrency: int, duration_s: float,
                      keep_body: bool = False) -> list[Outcome]:
    stop_at = time.monotonic() + duration_s
    outcomes: list[Outcome] = []
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.monotonic() < stop_at:
            counter += 1
            outcomes.append(await send(session, make(counter), keep_body))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def open_loop(session: aiohttp.ClientSession, make: MakeRequest, rate: float, duration_s: float,
                    poisson: bool = False, seed: int = 0, keep_body: bool = False) -> list[Outcome]:
    """Start requests at `rate` per second for `duration_s` (Poisson arrivals if asked); wait for all.

    At a constant rate exactly round(rate x duration) requests start, at start + i / rate (offsets summed in
    floating point on a large monotonic clock could add one more)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Outcome]] = []
    start = time.monotonic()
    if poisson:
        arrivals, offset = [], 0.0
        while offset < duration_s:
            arrivals.append(offset)
            offset += rng.expovariate(rate)
    else:
        arrivals = [i / rate for i in range(round(rate * duration_s))]
    for i, offset in enumerate(arrivals, start=1):
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(session, make(i), keep_body)))
    return list(await asyncio.gather(*tasks))


def throughput(outcomes: list[Outcome], status: int = 200) -> float:
    ok = [o for o in outcomes if o.status == status]
    if len(ok) < 2:
        return 0.0
    span = max(o.end for o in ok) - min(o.start for o in outcomes)
    return len(ok) / span if span > 0 else 0.0


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    from collections import Counter

    return dict(sorted(Counter(o.status for o in outcomes).items()))
