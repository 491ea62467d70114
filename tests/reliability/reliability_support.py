"""Helpers for the reliability suite: extra tiny models, traffic generators, /proc and metric readers.

The suite attacks a real `vitserve serve` process on a loopback port (started by the
tests' one launcher, tests/service_server.py). The extra models here are built with onnx.helper:
a slow convolution stack (compute time without big weights, for overload and drain), and a model
whose graph only runs at batch 1 (an ONNX Runtime error inside a batch).
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

# tests/ (service_server) and tests/integration (tiny_repository): also in a server that imports a reliability
# test module as a runtime plugin, where pytest's conftest path setup never ran
for _path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[1] / "integration"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from service_server import API_KEY, ServerProcess, start_server  # noqa: E402,F401  (after the sys.path setup; re-exported to the reliability tests)
from tiny_repository import (  # noqa: E402,F401  (after the sys.path setup; re-exported to the reliability tests)
    TinyModel,
    add_version,
    build_tiny_repository,
    expected_logits,
    write_model,
)

STACK_TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
# Figures measured by the suite (overload rejection latency, drain, soak): printed in the terminal summary, carried
# there as the reports' user properties named with this prefix (tests/reliability/conftest.py, tests/conftest.py)
FIGURES: dict[str, object] = {}
FIGURE_PREFIX = "figure:"


# -- extra models -------------------------------------------------------------------------------
def slow_conv_onnx(model: TinyModel, version: int, layers: int = 24, channels: int = 32) -> onnx.ModelProto:
    """pixel_values [b,3,S,S] -> `layers` x (3x3 conv + ReLU) -> global average pool -> linear: slow, small."""
    rng = np.random.default_rng(version * 7919 + layers)
    s, c = model.size, channels
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, s, s])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.num_classes])
    inits, nodes, prev = [], [], "pixel_values"
    for i in range(layers):
        cin = 3 if i == 0 else c
        w = (rng.normal(size=(c, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    inits.append(numpy_helper.from_array(rng.normal(size=(c, model.num_classes)).astype(np.float32), "head"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "head"], ["logits"]),
    ]
    proto = helper.make_model(helper.make_graph(nodes, model.name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    return proto


def batch_one_only_onnx(model: TinyModel, version: int) -> onnx.ModelProto:
    """A graph whose Reshape to a constant [1, 3*S*S] works for batch 1 and fails in ORT for any larger batch."""
    rng = np.random.default_rng(version)
    features = 3 * model.size * model.size
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, model.size, model.size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.num_classes])
    inits = [
        numpy_helper.from_array(np.array([1, features], dtype=np.int64), "shape1"),
        numpy_helper.from_array((rng.normal(size=(features, model.num_classes)) / 50).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Reshape", ["pixel_values", "shape1"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    proto = helper.make_model(helper.make_graph(nodes, model.name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    return proto


def write_custom_model(root: Path, model: TinyModel, build: Callable[[TinyModel, int], onnx.ModelProto]) -> Path:
    """tiny_repository.write_model with the ONNX graph from `build(model, version)`."""
    return write_model(root, model, build)


SLOW = TinyModel("tiny_slow", size=64, max_batch_size=4, max_queue_size=8)
BATCH_ONE = TinyModel("tiny_batch1", max_batch_size=4, max_queue_delay_us=20000)


# -- payloads -----------------------------------------------------------------------------------
def png_bytes(size: tuple[int, int] = (90, 70), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def v2_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


# -- observation --------------------------------------------------------------------------------
def proc_status_kb(pid: int, field_name: str = "VmRSS") -> int:
    """A memory figure of a process from /proc/<pid>/status, in kB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field_name} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so a peak is measured from now on."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM is the peak since start: a stricter measurement, never a laxer one


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def assert_clean_error(response: httpx.Response, statuses: list[int] | tuple[int, ...]) -> None:
    """A 4xx/5xx answer that is JSON {"error": "..."} with an allowed status and no stack trace."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert not STACK_TRACE.search(response.text), response.text[:500]
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), response.headers
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


@dataclass
class GoodTraffic:
    """Well-formed requests in a background thread, to prove hostile ones do not disturb them."""

    base_url: str
    model: str = "tiny_a"
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self, worker: int) -> None:
        image = png_bytes(seed=worker)
        x = np.random.default_rng(worker).normal(size=(1, 3, 32, 32)).astype(np.float32)
        with httpx.Client(base_url=self.base_url, timeout=30) as c:
            i = 0
            while not self._stop.is_set():
                try:
                    if i % 2:
                        r = c.post(f"/v1/models/{self.model}/classify", content=image,
                                   headers={"content-type": "image/png"})
                    else:
                        r = c.post(f"/v2/models/{self.model}/infer", json=v2_body(x))
                    self.statuses.append(r.status_code)
                    if r.status_code != 200:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                i += 1

    def __enter__(self) -> GoodTraffic:
        for w in range(2):
            t = threading.Thread(target=self._loop, args=(w,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        wait_until(lambda: len(self.statuses) >= 4, 30)  # the good traffic overlaps the attack, however short
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def check(self, minimum: int = 4) -> None:
        assert not self.errors, f"good requests were disturbed: {self.errors[:5]}"
        assert len(self.statuses) >= minimum, f"only {len(self.statuses)} good requests ran"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextmanager
def stopped_cleanly(srv: ServerProcess) -> Iterator[ServerProcess]:
    """Yield `srv`; afterwards stop it and require exit 0 and no unhandled error or traceback in its log."""
    try:
        yield srv
    finally:
        code = srv.stop()
        log = srv.log()
        assert code == 0, f"server exited with {code}:\n{log[-3000:]}"
        assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]
