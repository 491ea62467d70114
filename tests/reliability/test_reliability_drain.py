"""Graceful shutdown under sustained load (extends tests/integration/test_http_drain.py, which fires one burst).

While an open-loop load runs on the slow model and a readiness prober polls, SIGTERM: from that moment
readiness never answers 200, requests that arrive later are refused (503 while the socket stays open for
the shutdown delay, connection refused or reset after it closes), every request sent before the signal is
answered, and the process exits 0 within the drain timeout. A request sent before the signal can never
be refused at the transport level: the socket stays open until the accepted ones are answered.
A second test shows the drain timeout bounds the shutdown when the accepted work cannot finish in time,
a third that SIGTERM during a long warm-up does not wait for the warm-up.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import httpx
from reliability_load import Outcome, Request, make_session, open_loop, summary
from reliability_support import (
    API_KEY,
    FIGURES,
    TinyModel,
    add_version,
    build_tiny_repository,
    png_bytes,
    start_server,
)

SIGNAL_SLACK_S = 0.5  # signal delivery and the event loop noticing it
SHUTDOWN_DELAY_S = 2.0


def transport_failures(outcomes: list[Outcome], sigterm_at: float) -> tuple[list[Outcome], list[Outcome]]:
    """(refused, lost): requests that never got an HTTP answer, split by whether they were sent after the
    signal (intake had stopped: a refused or reset connection is a refusal) or before it (lost)."""
    failed = [o for o in outcomes if o.status == 0]
    return [o for o in failed if o.start > sigterm_at], [o for o in failed if o.start <= sigterm_at]


def refused_at_intake(outcome: Outcome) -> bool:
    """A 503 the server gave a request it had not accepted (intake closed, or a full queue)."""
    return b"not accepted" in outcome.body or b"queue is full" in outcome.body


class ReadinessProbe(threading.Thread):
    """Polls /v2/health/ready on fresh connections, recording (time, status or 0 for refused)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.seen, self.stop = base, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status = httpx.get(self.base + "/v2/health/ready", timeout=2).status_code
            except httpx.TransportError:
                status = 0
            self.seen.append((t, status))
            time.sleep(0.02)


def test_sigterm_under_sustained_load_stops_intake_and_completes_accepted_work(
    reliability_repository: Path, tmp_path: Path,
) -> None:
    drain_timeout = 20.0
    server = start_server(reliability_repository, tmp_path, "--models", "tiny_slow", "--warmup", "one",
                          "--intra-op-threads", "1", "--max-queue-size", "64",
                          "--drain-timeout-s", str(drain_timeout), "--shutdown-delay-s", str(SHUTDOWN_DELAY_S))
    image = png_bytes((64, 64))
    req = Request("POST", f"{server.base_url}/v1/models/tiny_slow/classify", image, {"content-type": "image/png"})
    probe = ReadinessProbe(server.base_url)
    probe.start()
    sigterm_at = 0.0

    async def main() -> list[Outcome]:
        nonlocal sigterm_at
        connector = aiohttp.TCPConnector(limit=0, force_close=True)  # one connection per request
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
            load = asyncio.create_task(open_loop(s, lambda i: req, 60, 4.0))
            await asyncio.sleep(1.5)
            sigterm_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            return await load

    try:
        outcomes = asyncio.run(main())
        code = server.proc.wait(drain_timeout + 10)
        exited_at = time.monotonic()
    finally:
        probe.stop.set()
        probe.join(5)
        if server.proc.poll() is None:
            server.proc.kill()
    assert code == 0, server.log()[-3000:]
    assert "shutdown complete" in server.log()
    refused, lost = transport_failures(outcomes, sigterm_at)
    answered = [o for o in outcomes if o.status]
    assert not lost, f"requests sent before SIGTERM lost: {[o.error for o in lost[:3]]}"
    assert all(o.status in (200, 503) for o in answered), summary(answered)
    # a request the server accepted is answered: a 503 is a refusal at intake (after the signal) or a full
    # queue, never a request failed half way (that would be a lost request counted as a success)
    half_way = [o for o in answered if o.status == 503 and not refused_at_intake(o)]
    assert not half_way, f"accepted requests answered 503: {[o.body[:120] for o in half_way[:3]]}"
    early_refused = [o for o in answered if o.status == 503 and o.start < sigterm_at - SIGNAL_SLACK_S
                     and b"queue is full" not in o.body]
    assert not early_refused, f"requests sent well before SIGTERM refused: {[o.body[:120] for o in early_refused[:3]]}"
    late_ok = [o for o in answered if o.status == 200 and o.start > sigterm_at + SIGNAL_SLACK_S]
    assert not late_ok, f"{len(late_ok)} requests sent after SIGTERM were still accepted"
    lame_duck = [o for o in outcomes if sigterm_at + SIGNAL_SLACK_S < o.start < sigterm_at + SHUTDOWN_DELAY_S - 0.5]
    assert lame_duck and all(o.status == 503 and o.retry_after for o in lame_duck), (
        f"while the socket stays open late requests get 503 + Retry-After, not a reset: {summary(lame_duck)}")
    before = [s for t, s in probe.seen if t < sigterm_at]
    after = [s for t, s in probe.seen if t > sigterm_at + 0.05]
    assert 200 in before, "readiness never reported ready before SIGTERM"
    assert after and 200 not in after, f"readiness said ready after SIGTERM: {after[:10]}"
    ok_before = sum(o.status == 200 for o in answered if o.start <= sigterm_at)
    assert ok_before >= 1
    FIGURES["drain"] = {
        "requests": len(outcomes), "answers": summary(outcomes), "refused_connections": len(refused), "lost": len(lost),
        "answered_503_during_shutdown_delay": len(lame_duck),
        "accepted_before_sigterm_completed": ok_before,
        "readiness_after_sigterm": sorted(set(after)),
        "exit_code": code, "exit_s_after_sigterm": round(exited_at - sigterm_at, 2),
    }


def test_drain_timeout_bounds_the_shutdown(reliability_repository: Path, tmp_path: Path) -> None:
    """Queue ~6 s of work, allow 1 s of drain: the process still exits 0, promptly; what could not finish in
    time is answered 503 (retry elsewhere), never cut off or answered 500."""
    server = start_server(reliability_repository, tmp_path, "--models", "tiny_slow", "--warmup", "one",
                          "--intra-op-threads", "1", "--max-batch-size", "1", "--max-queue-size", "256",
                          "--drain-timeout-s", "1")
    image = png_bytes((64, 64))
    req = Request("POST", f"{server.base_url}/v1/models/tiny_slow/classify", image, {"content-type": "image/png"})

    async def main() -> tuple[list[Outcome], float]:
        async with make_session(timeout_s=30) as s:
            tasks = [asyncio.create_task(open_loop(s, lambda i: req, 400, 0.6))]
            await asyncio.sleep(0.8)
            t = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            return (await tasks[0]), t

    try:
        outcomes, sigterm_at = asyncio.run(main())
        code = server.proc.wait(30)
        took = time.monotonic() - sigterm_at
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert code == 0, server.log()[-3000:]
    answered = [o for o in outcomes if o.status]
    refused, lost = transport_failures(outcomes, sigterm_at)
    assert all(o.status in (200, 503) for o in answered), summary(answered)
    assert not lost, f"requests cut off without an answer: {[o.error for o in lost[:3]]}"
    # here accepted work may fail, but only because the drain timeout ran out, and says so
    assert all(refused_at_intake(o) or b"stopped before" in o.body for o in answered if o.status == 503), (
        [o.body[:120] for o in answered if o.status == 503][:3])
    assert took < 1 + 8, f"shutdown took {took:.1f}s with a 1 s drain timeout"
    FIGURES["drain_timeout_1s"] = {"answers": summary(outcomes), "exit_s_after_sigterm": round(took, 2),
                                   "refused_connections": len(refused), "lost": len(lost)}


def test_sigterm_while_models_warm_up_exits_within_the_drain_timeout(
    reliability_repository: Path, tmp_path: Path,
) -> None:
    """A pod told to stop while it is still warming up (a rollout cancelled, a node drained) must not
    finish a long warm-up first: Kubernetes kills it after its grace period (exit 137)."""
    # warm-up of tiny_slow at every batch size 1..64: ~2000 images, tens of seconds on one thread; live, not ready
    server = start_server(reliability_repository, tmp_path, "--models", "tiny_slow", "--warmup", "all",
                          "--max-batch-size", "64", "--intra-op-threads", "1", "--drain-timeout-s", "2",
                          ready_path="/v2/health/live")
    proc = server.proc
    try:
        assert httpx.get(server.base_url + "/v2/health/ready").status_code == 503, (
            "warm-up finished too fast to test this")
        time.sleep(0.5)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(2 + 8)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    FIGURES["sigterm_during_warmup"] = {"exit_code": code, "exit_s_after_sigterm": round(took, 1)}
    assert code == 0, f"still running {took:.0f} s after SIGTERM with a 2 s drain timeout (exit {code})"


def test_sigterm_during_a_version_swap_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM right after a reload swapped versions: requests held by the retiring version and by the new
    one are all answered (200, or 503 if they arrived after intake stopped) and the process exits 0."""
    model = TinyModel("tiny_a")
    root = build_tiny_repository(tmp_path / "repo", [model])
    server = start_server(root, tmp_path, "--warmup", "one", "--drain-timeout-s", "10")
    body = ('{"inputs":[{"name":"pixel_values","shape":[1,3,32,32],"datatype":"FP32","data":['
            + ",".join(["0.25"] * 3072) + "]}]}").encode()
    req = Request("POST", f"{server.base_url}/v2/models/tiny_a/infer", body, {"content-type": "application/json"})

    sigterm_at = 0.0

    async def main() -> list[Outcome]:
        nonlocal sigterm_at
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
            load = asyncio.create_task(open_loop(s, lambda i: req, 150, 3.0))
            await asyncio.sleep(0.8)
            add_version(root, model, 2)
            async with s.post(f"{server.base_url}/v2/repository/models/tiny_a/load",
                              headers={"authorization": f"Bearer {API_KEY}"}) as r:
                assert r.status == 200, await r.text()
            sigterm_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            return await load

    try:
        outcomes = asyncio.run(main())
        code = server.proc.wait(30)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    _, lost = transport_failures(outcomes, sigterm_at)
    assert not lost, [o.error for o in lost[:3]]
    assert all(o.status in (0, 200, 503) for o in outcomes), summary(outcomes)
    half_way = [o for o in outcomes if o.status == 503 and not refused_at_intake(o)]
    assert not half_way, f"accepted requests answered 503: {[o.body[:120] for o in half_way[:3]]}"
    assert code == 0, server.log()[-3000:]
    FIGURES["sigterm_during_swap"] = {"answers": summary(outcomes), "lost": len(lost)}
