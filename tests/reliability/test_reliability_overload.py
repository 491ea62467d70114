"""Overload and deadlines against the real server, with a deliberately slow model (tiny_slow, ~20 ms/image).

At several times the measured sustainable rate (alternating /v1 classify and /v2 binary infer requests):
the excess gets 503 + Retry-After at once, accepted requests finish within their deadline, resident
memory stays bounded, and throughput recovers when the load drops. Deadlines: a request past its deadline gets
504 and is never computed, counted by comparing the server's computed-image counters with the answers the clients got.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from reliability_load import Outcome, Request, closed_loop, make_session, open_loop, summary, throughput
from reliability_support import (
    FIGURES,
    ServerProcess,
    metric,
    percentile,
    proc_status_kb,
    start_server,
    wait_until,
)

DEADLINE_MS = 3000
QUEUE = 32  # images per model version
OVERLOAD_FACTOR = 5
RSS_GROWTH_LIMIT_KB = 200 * 1024


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 140, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def overload_server(reliability_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(reliability_repository, tmp_path_factory.mktemp("overload"), "--models", "tiny_slow",
                       "--warmup", "pow2", "--intra-op-threads", "1", "--max-queue-size", str(QUEUE),
                       "--max-queue-delay-ms", "5", "--default-deadline-ms", str(DEADLINE_MS))
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log()[-3000:]


def classify(base: str, deadline_ms: float | None = None):
    body = small_png()
    query = f"?deadline_ms={deadline_ms}" if deadline_ms else ""
    req = Request("POST", f"{base}/v1/models/tiny_slow/classify{query}", body, {"content-type": "image/png"})
    return lambda i: req


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(proc_status_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def v1_and_v2(base: str):
    """Alternate /v1 classify (PNG) and /v2 infer (binary tensor extension) requests."""
    import json

    import numpy as np

    image = classify(base)(0)
    x = np.random.default_rng(1).normal(size=(1, 3, 64, 64)).astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 64, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(x)}}]}).encode()
    infer = Request("POST", f"{base}/v2/models/tiny_slow/infer", header + x,
                    {"content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    return lambda i: image if i % 2 else infer


def test_overload_is_refused_fast_accepted_work_meets_its_deadline_and_throughput_recovers(
    overload_server: ServerProcess,
) -> None:
    base = overload_server.base_url
    make = v1_and_v2(base)

    async def phases() -> tuple[list[Outcome], list[Outcome], list[Outcome], float]:
        async with make_session() as s:
            await closed_loop(s, make, 4, 1.0)  # warm the HTTP path
            sustained = await closed_loop(s, make, 4, 3.0)
            rate = throughput(sustained)
            overload = await open_loop(s, make, OVERLOAD_FACTOR * rate, 4.0)
            await asyncio.sleep(0.5)
            recovered = await closed_loop(s, make, 4, 3.0)
            return sustained, overload, recovered, rate

    baseline_kb = proc_status_kb(overload_server.proc.pid)
    with RssSampler(overload_server.proc.pid) as rss:
        sustained, overload, recovered, rate = asyncio.run(phases())
    assert rate > 0 and all(o.status == 200 for o in sustained), summary(sustained)

    rejected = [o for o in overload if o.status == 503]
    accepted = [o for o in overload if o.status == 200]
    bad = [o for o in overload if o.status not in (200, 503, 504)]
    assert not bad, [(o.status, o.error) for o in bad[:5]]
    assert rejected, f"{OVERLOAD_FACTOR}x the sustainable rate was never refused: {summary(overload)}"
    assert accepted, summary(overload)
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in rejected), "503 without Retry-After"
    assert all(b'"error"' in o.body for o in rejected)
    # sanity bounds tied to the configured deadline, not performance thresholds
    assert max(o.latency for o in accepted) < DEADLINE_MS / 1000 + 2.0
    assert percentile([o.latency for o in rejected], 50) < DEADLINE_MS / 1000 / 2
    peak_kb = max(rss.samples)
    assert peak_kb - baseline_kb < RSS_GROWTH_LIMIT_KB, (baseline_kb, peak_kb)
    after = throughput(recovered)
    assert all(o.status == 200 for o in recovered), summary(recovered)
    assert after > 0.5 * rate, f"throughput did not recover: {after:.1f}/s after, {rate:.1f}/s before"

    FIGURES["overload"] = {
        "sustainable_rps": round(rate, 1),
        "offered_rps": round(OVERLOAD_FACTOR * rate, 1),
        "answers": summary(overload),
        "rejection_latency_ms_p50_p99": [round(percentile([o.latency for o in rejected], q) * 1000, 2)
                                         for q in (50, 99)],
        "accepted_latency_ms_p50_p99": [round(percentile([o.latency for o in accepted], q) * 1000, 1)
                                        for q in (50, 99)],
        "accepted_rps_during_overload": round(throughput(overload), 1),
        "recovered_rps": round(after, 1),
        "rss_mb_before_peak": [round(baseline_kb / 1024), round(peak_kb / 1024)],
    }


def test_expired_requests_are_never_computed(overload_server: ServerProcess) -> None:
    """A burst far beyond what 250 ms of compute can serve: the late ones get 504 and no image is computed
    for them. Every image the server computed belongs to a request that got 200 (counted over the whole
    module, so the overload test's traffic is included on both sides)."""
    base = overload_server.base_url
    before = httpx.get(base + "/metrics").text

    async def burst() -> list[Outcome]:
        async with make_session() as s:
            return await open_loop(s, classify(base, deadline_ms=250), 400, 0.15)

    outcomes = asyncio.run(burst())
    after = httpx.get(base + "/metrics").text
    ok = sum(o.status == 200 for o in outcomes)
    expired = sum(o.status == 504 for o in outcomes)
    assert all(o.status in (200, 503, 504) for o in outcomes), summary(outcomes)
    assert expired > 0 and ok > 0, summary(outcomes)
    computed = metric(after, "vitserve_inferences_total", model="tiny_slow") - metric(
        before, "vitserve_inferences_total", model="tiny_slow")
    counted_expired = metric(after, "vitserve_deadline_expired_total", model="tiny_slow") - metric(
        before, "vitserve_deadline_expired_total", model="tiny_slow")
    assert computed == ok, f"{computed} images computed for {ok} answered requests ({summary(outcomes)})"
    assert counted_expired == expired
    # and over the server's whole life: computed images == 200 answers (requests_total is per status code)
    assert metric(after, "vitserve_inferences_total", model="tiny_slow") == metric(
        after, "vitserve_requests_total", model="tiny_slow", code="200")
    stats = httpx.get(base + "/v2/models/tiny_slow/stats").json()["model_stats"][0]
    assert stats["inference_count"] == metric(after, "vitserve_inferences_total", model="tiny_slow")
    FIGURES["deadlines"] = {"burst": summary(outcomes), "computed": computed, "expired_counted": counted_expired}


def test_disconnected_clients_leave_the_queue(overload_server: ServerProcess) -> None:
    """Clients that give up while queued are not computed for: beyond the requests answered 200, the server
    computes at most the batch(es) already dispatched when the clients hung up (max_batch_size = 4 each)."""
    base = overload_server.base_url
    before = httpx.get(base + "/metrics").text
    sent = QUEUE

    async def impatient() -> list[Outcome]:
        async with make_session(timeout_s=0.03) as s:  # every client hangs up after 30 ms
            return await open_loop(s, classify(base), 5000, QUEUE / 5000)

    outcomes = asyncio.run(impatient())
    assert len(outcomes) == sent and any(o.status == 0 for o in outcomes), summary(outcomes)

    def settled() -> bool:
        text = httpx.get(base + "/metrics").text
        return metric(text, "vitserve_queue_depth", model="tiny_slow") == 0

    assert wait_until(settled, 10)
    after = httpx.get(base + "/metrics").text
    computed = metric(after, "vitserve_inferences_total", model="tiny_slow") - metric(
        before, "vitserve_inferences_total", model="tiny_slow")
    ok = sum(o.status == 200 for o in outcomes)
    abandoned = sent - ok
    # abandoned requests still queued leave the queue; only the batch in flight when the clients hung up (and
    # one or two dispatched while the server learns of it) compute images nobody waits for
    wasted = computed - ok
    assert wasted <= 3 * 4, f"{computed} images computed for {ok} answered requests ({summary(outcomes)})"
    assert abandoned - wasted >= abandoned / 2, f"most abandoned requests were computed ({summary(outcomes)})"
    assert httpx.post(base + "/v1/models/tiny_slow/classify", content=small_png(),
                      headers={"content-type": "image/png"}, timeout=30).status_code == 200
    FIGURES["disconnects"] = {"sent": sent, "answers": summary(outcomes), "computed": computed,
                              "computed_for_abandoned": computed - ok}
