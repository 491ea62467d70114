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


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(base_url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for_metric(base_url: str, name: str, at_least: float, timeout_s: float = 30.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout_s
    value = metric(base_url, name, **labels)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
        value = metric(base_url, name, **labels)
    return value
