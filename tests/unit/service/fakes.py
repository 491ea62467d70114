"""Fake runtimes named for their behaviour, for tests of the batcher, model store, pipeline and HTTP layers.

They implement the `InferenceRuntime` interface without ONNX Runtime, with outputs derived from
their inputs so a test can tell whose result is whose. Every fake records the batch sizes it ran
and the rows it computed (to prove expired requests were never computed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

from service.runtimes import InferenceRuntime, RuntimeSpec


class EchoRuntime(InferenceRuntime):
    """logits[i, 0] = pixel_values[i, 0, 0, 0] (an id the test writes), logits[i, 1] = mean of image i."""

    provider = "FakeExecutionProvider"

    def __init__(self, spec: RuntimeSpec) -> None:
        super().__init__(spec)
        self.batches: list[int] = []
        self.computed_ids: list[float] = []
        self._lock = threading.Lock()

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        classes = self.spec.manifest.num_classes
        out = np.zeros((pixel_values.shape[0], classes), dtype=np.float32)
        out[:, 0] = pixel_values[:, 0, 0, 0]
        if classes > 1:
            out[:, 1] = pixel_values.reshape(pixel_values.shape[0], -1).mean(axis=1)
        with self._lock:
            self.batches.append(int(pixel_values.shape[0]))
            self.computed_ids.extend(float(v) for v in pixel_values[:, 0, 0, 0])
        return out


class SlowRuntime(EchoRuntime):
    """EchoRuntime that takes `delay_s` per batch (a busy model)."""

    delay_s = 0.05

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().run(pixel_values)


class GatedRuntime(EchoRuntime):
    """EchoRuntime whose `run` waits until the test opens `gate` (deterministic busy periods)."""

    def __init__(self, spec: RuntimeSpec) -> None:
        super().__init__(spec)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        return super().run(pixel_values)


class FailingRuntime(EchoRuntime):
    """Fails every batch that contains an image whose id is in `fail_ids` (all batches when None)."""

    fail_ids: set[float] | None = None

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        ids = {float(v) for v in pixel_values[:, 0, 0, 0]}
        if self.fail_ids is None or ids & self.fail_ids:
            raise RuntimeError("injected runtime failure")
        return super().run(pixel_values)

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Warm-up passes (zeros carry id 0), so the model still becomes ready."""


class WrongCountRuntime(EchoRuntime):
    """Returns one output row fewer than it was given (a broken model)."""

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        return super().run(pixel_values)[:-1]

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Skipped so the broken model still reaches serving."""


class NeverReadyRuntime(EchoRuntime):
    """Warm-up blocks until `release` is set (a model stuck loading)."""

    release = threading.Event()

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        self.release.wait()


class BrokenLoadRuntime(EchoRuntime):
    """Fails in its constructor, like a corrupt model file."""

    def __init__(self, spec: RuntimeSpec) -> None:
        raise RuntimeError("injected load failure")


def fake_factory(
    cls: type[InferenceRuntime] = EchoRuntime, **attrs: object
) -> Callable[[RuntimeSpec], InferenceRuntime]:
    """A runtime factory (for `service.runtimes.runtime_override` or `register_runtime`) that builds `cls` (with
    class attributes overridden by `attrs`) and keeps every instance in `factory.instances` for inspection."""
    instances: list[InferenceRuntime] = []

    def factory(spec: RuntimeSpec) -> InferenceRuntime:
        runtime = cls(spec)
        for key, value in attrs.items():
            setattr(runtime, key, value)
        instances.append(runtime)
        return runtime

    factory.instances = instances  # type: ignore[attr-defined]  # tests read the instances off the function
    return factory
