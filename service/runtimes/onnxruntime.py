"""The ONNX Runtime runtime, and the one place an ONNX Runtime session is built (`build_session`).

`build_session` is used by the service, by export's parity check and FLOPs probe, and by the in-process
benchmarks, so what they measure and check is the session the service serves. `OnnxRuntime` holds one
`InferenceSession` per model version, with execution providers chosen from settings, filtered by what
this machine can run and narrowed by the model's config.pbtxt (service/providers.py); the provider it
really got (`session.get_providers()[0]`) is what the API and metrics report. On the CUDA provider
batches run through I/O binding with pinned host buffers (service/io_binding.py). Registered in the
runtimes table for `backend: "onnxruntime"` and `platform: "onnxruntime_onnx"`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.compute_gate import cpu_cores
from service.errors import exception_summary
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
from service.runtimes.base import InferenceRuntime, RuntimeSpec
from service.runtimes.table import RuntimeBackend
from service.settings import Settings

log = logging.getLogger("vitserve.runtime")

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime sessions are built (this runtime's options; derived from Settings by `session_config`)."""

    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = 1  # 0: ONNX Runtime's own default
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization_level: str = "all"
    engine_cache_dir: Path | None = None  # TensorRT engine cache (service/providers.py: tensorrt_options)
    split_threads: bool = False  # intra-op threads were chosen automatically: the instances share them


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
        split_threads=not intra_op_threads,
    )


def settings_session_config(settings: Settings, concurrent_sessions: int) -> SessionConfig:
    """This runtime's options from the service settings (the table entry's `options`). The number of
    sessions plays no part: each gets every core, and the compute gate shares them."""
    return session_config(
        settings.providers,
        settings.intra_op_threads,
        settings.inter_op_threads,
        settings.allow_spinning,
        settings.graph_optimization_level,
        engine_cache_dir=settings.trt_engine_cache_dir,
    )


def instance_session(session: SessionConfig, instances: int) -> SessionConfig:
    """Automatic intra-op threads are shared by the instances: n instances x (threads // n) each."""
    if not session.split_threads or instances <= 1:
        return session
    return dataclasses.replace(session, intra_op_threads=max(1, session.intra_op_threads // instances))


def build_session(
    model: str | Path | bytes,
    config: SessionConfig | None = None,
    *,
    providers: Sequence[str] | None = None,
    provider_options: Sequence[dict[str, Any]] | None = None,
    log_severity_level: int | None = None,
    profile_prefix: str | None = None,
) -> Any:  # -> onnxruntime.InferenceSession
    """The one ONNX Runtime session builder: a model (path or serialised bytes) with `config`'s threads,
    spinning and graph optimisations, sequential execution, on `providers` (default: the config's).

    `profile_prefix` turns ONNX Runtime's profiler on (files start with it); `log_severity_level` quiets
    ONNX Runtime's own log."""
    import onnxruntime as ort

    cfg = config or SessionConfig()
    opts = ort.SessionOptions()
    if cfg.intra_op_threads:
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
    if log_severity_level is not None:
        opts.log_severity_level = log_severity_level
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=list(providers or cfg.providers),
                                provider_options=list(provider_options) if provider_options is not None else None)


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
        base = spec.options if isinstance(spec.options, SessionConfig) else SessionConfig()
        cfg = instance_session(base, spec.instances)
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
            session = build_session(spec.model_path, cfg, providers=providers, provider_options=plan.options)
        except Exception as exc:  # noqa: BLE001 - a GPU provider that fails to initialise
            if providers == [CPU]:
                raise
            log.warning("%s v%d: session with %s failed (%s); retrying with CPUExecutionProvider only",
                        spec.name, spec.version, providers, exception_summary(exc, 200))
            session = build_session(spec.model_path, cfg, providers=[CPU])
        self._session_seconds = time.perf_counter() - started
        self._session = session
        self.provider = session.get_providers()[0]
        # what one batch keeps busy on the CPU (the compute gate's weight); a GPU provider computes elsewhere
        self.cpu_threads = (cfg.intra_op_threads or cpu_cores()) if self.provider == CPU else 0
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
        self._options = dict(zip(providers, plan.options, strict=True)).get(self.provider, {})
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

    def auto_warmup_sizes(self, max_batch_size: int, preferred: Iterable[int] = ()) -> list[int]:
        """Batch 1 on the CPU provider: its first run at a new batch size costs no more than the next (only
        the session's very first run pays for lazy initialisation; BENCHMARKS.md); on a GPU provider the
        base class's sizes."""
        if self.provider == CPU:
            return [1]
        return super().auto_warmup_sizes(max_batch_size, preferred)

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
        for dim, want in zip(shape[1:], m.preprocess.input_size, strict=True):  # rank 4 checked
            if isinstance(dim, int) and dim != want:
                raise ValueError(f"input shape {shape} does not match manifest input_size {m.preprocess.input_size}")

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        if self._bound is not None:
            return self._bound.run(pixel_values)
        m = self.spec.manifest
        return self._session.run([m.output_name], {m.input_name: pixel_values})[0]

    def close(self) -> None:
        self._session = None


BACKEND = RuntimeBackend(create=OnnxRuntime, options=settings_session_config)
"""The runtimes table's entry (service/runtimes/table.py names it for onnxruntime / onnxruntime_onnx)."""
