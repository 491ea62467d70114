"""The ONNX Runtime runtime: `OnnxRuntime` holds one `InferenceSession` per model version (session.py builds
it), with execution providers chosen from the runtime's options (options.py), filtered by what this machine can
run and narrowed by the model's config.pbtxt (providers.py); the provider it really got
(`session.get_providers()[0]`) is what the API and metrics report. On the CUDA provider batches run through I/O
binding with pinned host buffers (io_binding.py). Registered in the runtimes table for `backend: "onnxruntime"`
and `platform: "onnxruntime_onnx"`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

from service.compute_gate import cpu_cores
from service.errors import exception_summary
from service.runtimes.base import InferenceRuntime, RuntimeSpec
from service.runtimes.onnxruntime.options import OnnxRuntimeOptions
from service.runtimes.onnxruntime.providers import (
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
from service.runtimes.onnxruntime.session import SessionConfig, build_session, instance_session, options_session_config
from service.runtimes.table import RuntimeBackend
from service.settings import Settings

log = logging.getLogger("vitserve.runtime")


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
            from service.runtimes.onnxruntime.io_binding import BoundRunner, host_allocator

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


def settings_session_config(settings: Settings, concurrent_sessions: int) -> SessionConfig:
    """The table entry's `options`: this runtime's own options (its VITSERVE_* variables, with the overrides in
    `settings.runtime_options`) as sessions. The number of sessions plays no part: each gets every core, and
    the compute gate shares them."""
    return options_session_config(OnnxRuntimeOptions.from_overrides(settings.runtime_options))


BACKEND = RuntimeBackend(create=OnnxRuntime, options=settings_session_config)
"""The runtimes table's entry (service/runtimes/table.py names it for onnxruntime / onnxruntime_onnx)."""
