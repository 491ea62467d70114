"""The ONNX Runtime runtime's own options: providers, threads, spinning, graph optimisation, TensorRT engine cache.

They are read as the server's settings are (`VITSERVE_PROVIDERS`, `VITSERVE_INTRA_OP_THREADS`, ... and the
`--providers`, `--intra-op-threads`, `--inter-op-threads` flags of `vitserve serve`), but live here so the
server-wide Settings name no runtime's knobs. The runtime's table entry builds them (service/runtimes/onnxruntime/
runtime.py) and the session builder turns them into a `SessionConfig` (session.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from service.runtimes.base import RuntimeOptions
from service.settings import split_csv

DEFAULT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
KNOWN_PROVIDERS = {
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
}


class OnnxRuntimeOptions(RuntimeOptions):
    """ONNX Runtime options (environment prefix `VITSERVE_`, e.g. `VITSERVE_INTRA_OP_THREADS=1`)."""

    cli_flags: ClassVar[dict[str, dict[str, Any]]] = {
        "providers": {"nargs": "+", "help": "ONNX Runtime execution providers in order of preference"},
        "intra_op_threads": {"type": int},
        "inter_op_threads": {"type": int},
    }

    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="ONNX Runtime execution providers in order of preference; unavailable ones are skipped "
        "and the provider a session really got is reported",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per session; 0 = every CPU core (divided among the "
        "model's execution instances): a lone request on any model gets the whole machine, and compute_threads "
        "keeps the sessions of several models from oversubscribing the cores"
    )
    inter_op_threads: int = Field(1, ge=1, description="ONNX Runtime inter-op threads per session (sequential mode)")
    allow_spinning: bool = Field(
        False,
        description="Let ORT worker threads spin-wait between ops and after a run instead of sleeping: off by "
        "default, because at low load it multiplies the CPU each request costs (throttled under a container CPU "
        "limit) and under contention it slows compute; on dedicated cores it buys throughput on tiny models "
        "(BENCHMARKS.md)",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level"
    )
    trt_engine_cache_dir: Path | None = Field(
        None, description="Writable directory for TensorRT engines (one sub-directory per model): enables the "
        "engine cache of every model served on TensorRT, overriding config.pbtxt's trt_engine_cache_path, so a "
        "restart loads engines instead of rebuilding them"
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("providers must name at least one execution provider")
        unknown = [p for p in value if p not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown execution providers {unknown}; known: {sorted(KNOWN_PROVIDERS)}")
        return value
