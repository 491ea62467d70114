"""The one place an ONNX Runtime session is built (`build_session`), and how: `SessionConfig`.

`build_session` is used by the service (runtime.py), by export's parity check and FLOPs probe, and by the
in-process benchmarks, so what they measure and check is the session the service serves. The service's
`SessionConfig` comes from the runtime's options (options.py) through `options_session_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.compute_gate import cpu_cores

if TYPE_CHECKING:  # the builder itself needs no settings machinery (export and the benchmarks use it)
    from service.runtimes.onnxruntime.options import OnnxRuntimeOptions

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime sessions are built (from the runtime's options by `options_session_config`)."""

    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = 1  # 0: ONNX Runtime's own default
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization_level: str = "all"
    engine_cache_dir: Path | None = None  # TensorRT engine cache (providers.py: tensorrt_options)
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


def options_session_config(options: OnnxRuntimeOptions) -> SessionConfig:
    """The sessions the runtime's options ask for."""
    return session_config(
        options.providers,
        options.intra_op_threads,
        options.inter_op_threads,
        options.allow_spinning,
        options.graph_optimization_level,
        engine_cache_dir=options.trt_engine_cache_dir,
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
