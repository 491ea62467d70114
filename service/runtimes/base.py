"""The runtime interface: what the model store needs from a runtime (run a batch, warm up, close).

After infinity's pre/core/post split: the batcher only calls `run` on a float32 batch; the pipeline
decodes images before queueing and postprocesses after. A runtime is chosen per model by the runtimes
table (service/runtimes/table.py) from config.pbtxt's `backend`/`platform`; what it needs beyond the
model (threads, providers, ...) arrives in `RuntimeSpec.options`, built by its own table entry and
opaque to the core.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.manifest import Manifest
from service.model_config import ModelConfig
from service.postprocess import top_k_predictions
from service.schemas import Prediction


@dataclass(frozen=True)
class RuntimeSpec:
    """What a runtime needs to know about the model version it serves."""

    name: str
    version: int
    manifest: Manifest
    max_batch_size: int
    model_path: Path | None = None
    config: ModelConfig | None = None  # config.pbtxt: execution accelerators, instance kind
    instances: int = 1  # batches the batcher computes at once on this runtime
    options: object = None  # the runtime's own options (its table entry builds them; opaque to the core)


class RuntimeOptions(BaseSettings):
    """Base of a runtime's own options: read from `VITSERVE_*` environment variables like the server's
    settings, and overridden by `Settings.runtime_options` (where the serve flags of `cli_flags` land), so
    the server-wide Settings never name a runtime's knobs."""

    model_config = SettingsConfigDict(env_prefix="VITSERVE_", extra="forbid", validate_default=True)

    #: `vitserve serve` flags setting these options: field name -> argparse keywords (the flag is --field-name)
    cli_flags: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, object]) -> Self:
        """The options from the environment, with the overrides this runtime knows winning (the others
        belong to other runtimes)."""
        known: dict[str, Any] = {k: v for k, v in overrides.items() if k in cls.model_fields}
        return cls(**known)  # the constructor (not model_validate) reads the environment


class InferenceRuntime(ABC):
    """One servable model version: run a batch, postprocess logits, warm up, close."""

    provider: str = "none"
    provider_note: str | None = None  # why this provider (the ones preferred to it were skipped)
    #: CPU threads one batch keeps busy, what it holds at the compute gate (0: computes elsewhere, not gated)
    cpu_threads: int = 0

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.manifest.preprocess.input_size

    @abstractmethod
    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] -> logits float32 [B, classes]. Called from the batcher's worker threads."""

    def postprocess(self, logits: np.ndarray, top_k: int) -> list[list[Prediction]]:
        """Softmax then the top_k classes of each row, best first."""
        return top_k_predictions(logits, top_k, self.spec.manifest.labels)

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Run every batch size once so the first real request pays no allocation or kernel selection."""
        c, h, w = self.input_shape
        classes = self.spec.manifest.num_classes
        for size in batch_sizes:
            out = self.run(np.zeros((size, c, h, w), dtype=np.float32))
            if out.shape != (size, classes):
                raise RuntimeError(f"warm-up at batch {size}: output shape {out.shape}, expected {(size, classes)}")

    def auto_warmup_sizes(self, max_batch_size: int, preferred: Iterable[int] = ()) -> list[int]:
        """What `warmup: auto` runs: the powers of two, the preferred batch sizes and the maximum (where a new
        shape may select kernels or build engines); a runtime whose first run at a new batch size costs no
        more than the next warms fewer."""
        sizes = set(warmup_sizes(max_batch_size, "pow2")) | {s for s in preferred if 1 <= s <= max_batch_size}
        return sorted(sizes)

    def close(self) -> None:  # noqa: B027  (optional hook: a runtime with nothing to release keeps the default)
        """Release the session."""


def warmup_sizes(max_batch_size: int, mode: str) -> list[int]:
    """The batch sizes warmed up before ready: every size the batcher can produce, or a documented subset
    ('auto' is the runtime's own choice: `InferenceRuntime.auto_warmup_sizes`)."""
    if mode == "one":
        return [1]
    if mode == "pow2":
        sizes = {1 << i for i in range(max_batch_size.bit_length()) if (1 << i) <= max_batch_size}
        return sorted(sizes | {max_batch_size})
    return list(range(1, max_batch_size + 1))
