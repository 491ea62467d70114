"""What the gRPC integration tests share: a repository (committed demo models + slow stand-ins), requests, counts.

The repository holds copies of the committed `demo` and `demo-cb` models (models/demo: 32x32 ViTs) and two
stand-in models (service/runtimes/standin.py: each batch waits VITSERVE_STANDIN_BATCH_MS, computes nothing) of one
image per batch, so requests stay queued long enough to cancel them or let their deadline pass.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.samples import Sample

from service.runtimes.standin import write_standin_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"
SLOW = "standin"  # max batch 1, queue of 16: one image per batch
TIGHT = "standin_tight"  # max batch 1, queue of 1 image: a second waiting request is refused
SLOW_BATCH_MS = "400"
INPUT, OUTPUT = "pixel_values", "logits"


def build_grpc_repository(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("demo", "demo-cb"):
        shutil.copytree(DEMO / name, root / name)
    write_standin_model(root, SLOW, size=32, num_classes=10, max_batch_size=1, max_queue_size=16)
    write_standin_model(root, TIGHT, size=32, num_classes=10, max_batch_size=1, max_queue_size=1)
    return root


def images(n: int, seed: int = 0) -> np.ndarray:
    """`n` demo inputs in the models' normalised range."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, 3, 32, 32)).astype(np.float32)


def grpc_input(x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # raw_input_contents
    return inp


def rest_logits(base_url: str, model: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(base_url.removeprefix("http://"))
    inp = httpclient.InferInput(INPUT, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(OUTPUT, binary_data=True)])
    result = out.as_numpy(OUTPUT)
    assert result is not None
    return result


def scrape(base_url: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=10).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def metric(base_url: str, name: str, **labels: str) -> float:
    return total(scrape(base_url), name, **labels)


def answered(base_url: str) -> float:
    """SLOW's requests answered 200 so far."""
    return metric(base_url, "vitserve_requests_total", model=SLOW, code="200")


def wait_queued_behind(base_url: str, busy: int, waiting: int, answered_before: float, max_done: int | None = None,
                       timeout_s: float = 30.0) -> None:
    """Until `waiting` more requests queue for SLOW (one image per batch) behind `busy` sent earlier, while no more
    than `max_done` of those are answered (by default all but the last: the waiting ones are not yet computed).

    One scrape gives the queue depth and the answers, and the busy ones not yet answered count as queued but one
    (in compute): a stale answer count asks for more, never less, so a slow host waits rather than passes early,
    and the window to queue in lasts as long as the busy ones do, not one batch.
    """
    limit = busy - 1 if max_done is None else max_done
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(base_url)
        done = int(total(samples, "vitserve_requests_total", model=SLOW, code="200") - answered_before)
        depth = total(samples, "vitserve_queue_depth", model=SLOW)
        assert done <= limit, f"{done} of the {busy} busy requests answered before {waiting} more queued"
        if depth >= max(busy - done - 1, 0) + waiting:
            return
        assert time.monotonic() < deadline, f"queue depth {depth} with {done} of {busy} busy answered"
        time.sleep(0.02)


def wait_for_metric(base_url: str, name: str, at_least: float, timeout_s: float = 30.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout_s
    value = metric(base_url, name, **labels)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
        value = metric(base_url, name, **labels)
    return value
