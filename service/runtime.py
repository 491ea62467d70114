"""The runtime interface (preprocess / run / postprocess / warmup) and its ONNX Runtime implementation.

After infinity's pre/core/post split: the batcher only calls `run` on a float32 batch; the
registry calls `preprocess` (off the event loop) before queueing and `postprocess` after.
`OnnxRuntime` holds one `InferenceSession` per model version, with execution providers chosen from
settings, filtered by what this machine can run and narrowed by the model's config.pbtxt
(service/providers.py); the provider it really got (`session.get_providers()[0]`) is what the API
and metrics report. On the CUDA provider batches run through I/O binding with pinned host buffers
(service/io_binding.py); the CPU path calls `session.run`. Fakes for tests live in `service.fakes`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.compute_gate import cpu_cores
from service.manifest import Manifest
from service.model_config import ModelConfig
from service.preprocess import preprocess_image
from service.providers import (
    CPU,
    CUDA,
    TENSORRT,
    CudaStatus,
    cuda_status,
    describe,
    engine_cache_path,
    plan_for_model,
    usable_providers,
)
from service.schemas import Prediction

log = logging.getLogger("vitserve.runtime")


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime sessions are built; derived from Settings by `session_config`."""

    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization_level: str = "all"
    engine_cache_dir: Path | None = None  # TensorRT engine cache (service/providers.py: tensorrt_options)


@dataclass(frozen=True)
class RuntimeSpec:
    """What a runtime needs to know about the model version it serves."""

    name: str
    version: int
    manifest: Manifest
    max_batch_size: int
    model_path: Path | None = None
    session: SessionConfig = field(default_factory=SessionConfig)
    config: ModelConfig | None = None  # config.pbtxt: execution accelerators, instance kind


def session_config(
    providers: list[str],
    intra_op_threads: int,
    inter_op_threads: int,
    allow_spinning: bool,
    graph_optimization_level: str,
    cpu_count: int | None = None,
    engine_cache_dir: Path | None = None,
) -> SessionConfig:
    """Threads chosen deliberately: every session may use every core, the compute gate shares them.

    intra-op threads = cores unless set, however many sessions are loaded: a lone request on any model
    gets the whole machine, and the process-wide compute gate (service/compute_gate.py) lets models
    take turns instead of oversubscribing the cores. Spinning (busy-wait of idle pool threads) only when
    asked for: at low load it multiplies the CPU a request costs, which a container's CPU limit
    throttles, for a gain only on dedicated cores under load (BENCHMARKS.md, analysis).
    """
    cores = cpu_count or cpu_cores()
    return SessionConfig(
        providers=list(providers),
        intra_op_threads=intra_op_threads or cores,
        inter_op_threads=inter_op_threads,
        allow_spinning=bool(allow_spinning),
        graph_optimization_level=graph_optimization_level,
        engine_cache_dir=engine_cache_dir,
    )


class InferenceRuntime(ABC):
    """One servable model version: preprocess an image, run a batch, postprocess logits, warm up."""

    provider: str = "none"
    provider_note: str | None = None  # why this provider (the ones preferred to it were skipped)
    #: CPU threads one batch keeps busy, what it holds at the compute gate (0: computes elsewhere, not gated)
    cpu_threads: int = 0

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.manifest.preprocess.input_size

    def preprocess(self, data: bytes, max_pixels: int) -> np.ndarray:
        """Image bytes -> float32 [3, H, W] per the manifest."""
        return preprocess_image(data, self.spec.manifest.preprocess, max_pixels)

    @abstractmethod
    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] -> logits float32 [B, classes]. Called from one worker thread."""

    def postprocess(self, logits: np.ndarray, top_k: int) -> list[list[Prediction]]:
        """Softmax then the top_k classes of each row, best first."""
        return top_k_predictions(logits, top_k, self.spec.manifest.labels)

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Run every batch size once so the first real request pays no allocation or kernel selection."""
        c, h, w = self.input_shape
        for size in batch_sizes:
            out = self.run(np.zeros((size, c, h, w), dtype=np.float32))
            if out.shape != (size, self.spec.manifest.num_classes):
                raise RuntimeError(
                    f"warm-up at batch {size}: output shape {out.shape}, expected {(size, self.spec.manifest.num_classes)}"
                )

    def close(self) -> None:
        """Release the session."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_predictions(logits: np.ndarray, top_k: int, labels: list[str]) -> list[list[Prediction]]:
    probs = softmax(logits)
    k = min(top_k, probs.shape[-1])
    out = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([Prediction(label=labels[i], index=int(i), score=float(row[i])) for i in idx])
    return out


def warmup_sizes(max_batch_size: int, mode: str, provider: str = CPU, preferred: Iterable[int] = ()) -> list[int]:
    """The batch sizes warmed up before ready: every size the batcher can produce, or a documented subset.

    'auto': batch 1 on the CPU provider, whose first run at a new batch size costs no more than the next
    (only the session's very first run pays for lazy initialisation); on a GPU provider, where a new
    shape may select kernels or build engines, the powers of two, the preferred batch sizes and the maximum.
    """
    if mode == "auto":
        if provider == CPU:
            return [1]
        sizes = set(warmup_sizes(max_batch_size, "pow2")) | {s for s in preferred if 1 <= s <= max_batch_size}
        return sorted(sizes)
    if mode == "one":
        return [1]
    if mode == "pow2":
        sizes = {1 << i for i in range(max_batch_size.bit_length()) if (1 << i) <= max_batch_size}
        return sorted(sizes | {max_batch_size})
    return list(range(1, max_batch_size + 1))


# Providers this process tried and did not get although the probe found them usable (a library
# missing beyond the probe's reach): later sessions skip them instead of failing over again, noisily.
_UNUSABLE_PROVIDERS: set[str] = set()
_ANNOUNCED: set[tuple[str, ...]] = set()


def _announce(requested: list[str], usable: list[str], status: CudaStatus) -> None:
    """Say once per process (per provider request) which provider serves and why, in one line."""
    key = tuple(requested)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        log.info("%s", describe(requested, usable, status))


class OnnxRuntime(InferenceRuntime):
    """An ONNX Runtime `InferenceSession` for one model version."""

    def __init__(self, spec: RuntimeSpec) -> None:
        super().__init__(spec)
        import onnxruntime as ort

        if spec.model_path is None:
            raise ValueError(f"{spec.name}: OnnxRuntime needs a model_path")
        cfg = spec.session
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.intra_op_threads
        opts.inter_op_num_threads = cfg.inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[cfg.graph_optimization_level]
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        available = ort.get_available_providers()
        status = cuda_status(tuple(available))
        usable = [p for p in usable_providers(cfg.providers, available, status) if p not in _UNUSABLE_PROVIDERS]
        _announce(cfg.providers, usable, status)
        m = spec.manifest
        plan = plan_for_model(usable or [CPU], spec.config, input_name=m.input_name,
                              input_dims=m.preprocess.input_size, max_batch_size=spec.max_batch_size,
                              engine_cache_dir=cfg.engine_cache_dir,
                              model_digest=m.files.get(f"{spec.version}/model.onnx", ""))
        providers = plan.providers
        for options in plan.options:
            engine_cache_path(options)
        started = time.perf_counter()
        try:
            session = ort.InferenceSession(str(spec.model_path), sess_options=opts, providers=providers,
                                           provider_options=plan.options)
        except Exception as exc:  # noqa: BLE001 - a GPU provider that fails to initialise
            if providers == [CPU]:
                raise
            log.warning("%s v%d: session with %s failed (%s); retrying with CPUExecutionProvider only",
                        spec.name, spec.version, providers, str(exc).splitlines()[0][:200])
            session = ort.InferenceSession(str(spec.model_path), sess_options=opts, providers=[CPU])
        self._session_seconds = time.perf_counter() - started
        self._session = session
        self.provider = session.get_providers()[0]
        self.cpu_threads = cfg.intra_op_threads if self.provider == CPU else 0
        if self.provider in providers:  # everything ahead of the provider we got did not work here
            skipped = providers[: providers.index(self.provider)]
            if skipped and not _UNUSABLE_PROVIDERS.issuperset(skipped):
                log.warning("%s not usable in this process (session fell back to %s); later sessions skip them",
                            ", ".join(skipped), self.provider)
            _UNUSABLE_PROVIDERS.update(skipped)
        notes = [status.reasons[p] for p in cfg.providers if p not in usable and p in status.reasons]
        notes += [plan.note] if plan.note else []
        if self.provider != providers[0]:
            notes.append(f"{providers[0]} failed to start")
        self.provider_note = "; ".join(dict.fromkeys(notes)) or None
        self._options = dict(zip(providers, plan.options)).get(self.provider, {})
        self._warmed = False
        self._bound = None
        if self.provider in (TENSORRT, CUDA):  # the graph runs on the GPU: bound, pinned host buffers
            from service.io_binding import BoundRunner, host_allocator

            allocate, kind = host_allocator(CUDA)
            self._bound = BoundRunner(session, m.input_name, m.output_name, m.num_classes, allocate)
            log.info("%s v%d: I/O binding with %s host buffers", spec.name, spec.version, kind)
        log.info("%s v%d: session on %s (intra-op threads %d, spinning %s)", spec.name, spec.version,
                 self.provider, cfg.intra_op_threads, "on" if cfg.allow_spinning else "off")
        self._check_signature()

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """As the base class; on TensorRT the first warm-up also logs how long its engines took (built, or
        loaded from the engine cache, before the model reports ready)."""
        if self._warmed or self.provider != TENSORRT:
            super().warmup(batch_sizes)
            self._warmed = True
            return
        started = time.perf_counter()
        super().warmup(batch_sizes)
        first = time.perf_counter() - started
        self._warmed = True
        opts = self._options
        cache = opts.get("trt_engine_cache_path") if opts.get("trt_engine_cache_enable") == "True" else None
        log.info("%s v%d: TensorRT engines ready in %.1fs (session %.1fs + first batch %.1fs; profile %s..%s; "
                 "fp16 %s; engine cache %s)", self.spec.name, self.spec.version, self._session_seconds + first,
                 self._session_seconds, first, opts.get("trt_profile_min_shapes", "?"),
                 opts.get("trt_profile_max_shapes", "?"), opts.get("trt_fp16_enable", "False"), cache or "off")

    def _check_signature(self) -> None:
        m = self.spec.manifest
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if m.input_name not in inputs:
            raise ValueError(f"graph has no input {m.input_name!r} (inputs: {sorted(inputs)})")
        if m.output_name not in outputs:
            raise ValueError(f"graph has no output {m.output_name!r} (outputs: {sorted(outputs)})")
        shape = inputs[m.input_name].shape
        if len(shape) != 4:
            raise ValueError(f"input {m.input_name!r} has rank {len(shape)}, expected 4 (batch, 3, H, W)")
        for dim, want in zip(shape[1:], m.preprocess.input_size):
            if isinstance(dim, int) and dim != want:
                raise ValueError(f"input shape {shape} does not match manifest input_size {m.preprocess.input_size}")

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        if self._bound is not None:
            return self._bound.run(pixel_values)
        m = self.spec.manifest
        return self._session.run([m.output_name], {m.input_name: pixel_values})[0]

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]


def onnx_runtime_factory(spec: RuntimeSpec) -> InferenceRuntime:
    return OnnxRuntime(spec)
