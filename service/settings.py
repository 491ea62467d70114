"""Service settings: one pydantic-settings object, built once (CLI or app factory) and passed down.

Every server-wide knob lives here, documented by its `Field` description, read from keyword arguments first
and then from `VITSERVE_*` environment variables. Nothing reads the environment at import time, and a bad
value fails at start instead of silently falling back. A runtime's own options (ONNX Runtime's providers and
threads, ...) live with the runtime (service/runtimes/*/options.py), read the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def split_csv(value: object) -> object:
    """Accept 'a,b' as well as a JSON list or a Python list (env vars are plain strings)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """vitserve service settings (environment prefix `VITSERVE_`, e.g. `VITSERVE_PORT=8080`)."""

    model_config = SettingsConfigDict(env_prefix="VITSERVE_", extra="forbid", validate_default=True)

    repository: Path = Field(description="Model repository directory (Triton layout: <model>/<version>/model.onnx)")
    models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Models to load at start (comma separated); all models in the repository when unset"
    )
    host: str = Field("127.0.0.1", description="Bind address; loopback by default, set 0.0.0.0 in a container")
    port: int = Field(8000, ge=0, le=65535, description="Bind port (0 = any free port)")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="Port of the gRPC endpoint (KServe v2 / Triton GRPCInferenceService and "
        "grpc.health.v1, on the bind address; Triton's 8001); 0 = no gRPC endpoint. Needs the `grpc` extra "
        "(pip install 'vitserve[grpc]'); without it the server serves REST and logs that gRPC is off",
    )

    max_batch_size: int | None = Field(
        None, ge=1, description="Override every model's max batch size (default: config.pbtxt max_batch_size)"
    )
    max_queue_delay_ms: float | None = Field(
        None,
        ge=0,
        description="Override the longest a request waits for a batch to fill while the runtime is busy "
        "(default: config.pbtxt dynamic_batching.max_queue_delay_microseconds)",
    )
    instances: int = Field(
        0, ge=0, description="Execution instances per model version: batches computed at once on its one "
        "session, the automatic intra-op threads divided among them (0 = config.pbtxt instance_group count). "
        "On CPU, 2 raise throughput under load (overlapping the HTTP work with compute) at the cost of "
        "batch-1 latency on large models (BENCHMARKS.md)"
    )
    compute_threads: int = Field(
        0, ge=0, description="Intra-op threads computing at once across every CPU session of the process: a batch "
        "(or warm-up run) waits, in arrival order, until its session's threads fit (0 = CPU cores). Models take "
        "turns on the cores instead of thrashing them; sessions on a GPU provider are not counted"
    )
    load_concurrency: int = Field(
        0, ge=0, description="Model versions loading (session creation and warm-up) at once (0 = CPU cores)"
    )
    max_queue_size: int | None = Field(
        None,
        ge=1,
        description="Override the queue bound in images per model version (default: config.pbtxt "
        "default_queue_policy.max_queue_size, or 8 x max batch size when that is 0)",
    )
    warmup: Literal["auto", "all", "pow2", "one"] = Field(
        "auto",
        description="Warm-up batch sizes before a model reports ready: 'auto' = batch 1 on the CPU provider (its "
        "first run at a new batch size costs no more than the next; BENCHMARKS.md), and on a GPU provider the "
        "powers of two, the preferred batch sizes and the maximum; or every size 1..max_batch_size ('all'), "
        "powers of two and the maximum ('pow2'), batch 1 only ('one')",
    )
    default_deadline_ms: float = Field(
        30_000, gt=0, description="Deadline of a request that names none; a request may ask for less, not more"
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 above)")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width x height); bigger images get 413 before decoding"
    )
    max_image_bytes: int = Field(
        160 * 1024 * 1024, ge=1024, description="Largest decoded image in bytes (width x height x bytes per pixel "
        "of its mode: 16-bit and float images cost more than 8-bit ones); bigger images get 413 before decoding"
    )
    max_top_k: int = Field(100, ge=1, description="Largest accepted top_k")
    max_images_per_request: int = Field(
        64, ge=1, description="Most images one v2 infer request may carry (never more than the model's max batch)"
    )
    preprocess_threads: int = Field(0, ge=0, description="Threads decoding images; 0 = number of CPU cores")
    gc_freeze: bool = Field(
        True,
        description="Once the models are served, freeze the objects alive (gc.freeze) so the garbage collector's "
        "full collections no longer walk them: less CPU per request and no collection pauses of tens of ms in the "
        "latency tail; done again after each model load or unload (service/gc_policy.py)",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024,
        description="Largest request line + headers of one request (431 above, before they are parsed further)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must deliver a request's complete headers within this many seconds "
        "of connecting or of starting the request (408 and closed otherwise: slowloris)",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest pause between two pieces of a request body; the connection is closed "
        "after it (the request counts as a client disconnect)",
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections at most; above it a new connection gets 503 and is closed at once "
        "(with --http-workers N, each front end takes N-th of it, rounded up)",
    )
    max_body_bytes_in_flight: int = Field(
        128 * 1024 * 1024, ge=1024, description="Bytes of request bodies the server holds at once (each request "
        "holds its Content-Length from its head to its answer; a chunked body the bytes received): a request "
        "that would go past it gets 503 + Retry-After before its body is read, unless no other holds any; a body "
        "of at most 64 KiB holds nothing, the connection cap bounds those (with "
        "--http-workers N, each front end takes N-th of it, rounded up)",
    )
    direct_routes: bool = Field(
        True, description="Serve the inference routes (v2 infer, v1 classify) straight from vitserve's HTTP protocol, "
        "without the ASGI layers (same answers, less CPU per request); off: every request goes through ASGI",
    )

    api_key: SecretStr | None = Field(
        None, description="Key for /v2/repository load/unload (header 'Authorization: Bearer <key>' or 'X-API-Key'); "
        "without it those endpoints are disabled (401)"
    )
    inference_api_key: SecretStr | None = Field(
        None, description="Optional key required for inference (/v1 classify and compare, /v2 infer; same headers); "
        "health, metadata and metrics stay open"
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="On shutdown, how long accepted requests may take to finish")
    shutdown_delay_s: float = Field(
        1.0, ge=0, description="On shutdown, keep the listening socket open at least this long after the signal, "
        "answering new requests 503 (readiness is already false): requests already on their way get an answer "
        "instead of a reset connection. Set it to how long your load balancer takes to stop sending"
    )
    poll_interval_s: float = Field(
        0.0, ge=0, description="Poll the repository for new version directories every N seconds (0 = off)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level")
    runtime_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Python modules imported at start, before any model loads (comma "
        "separated); each registers runtimes with service.runtimes.register_runtime for the config.pbtxt "
        "`backend`/`platform` values it serves"
    )
    runtime_options: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the runtimes' own options, by option name (each runtime "
        "reads its options, e.g. providers or intra_op_threads, from its VITSERVE_* variables and takes the keys "
        "it knows from here; the serve flags of a runtime's options land here): service/runtimes/*/options.py"
    )
    http_workers: int = Field(
        1, ge=1, le=64, description="HTTP front-end processes sharing the port: they parse and preprocess and hand "
        "tensors (shared memory) to the one engine process that owns the sessions and batchers; 1 = the "
        "single-process server (service/workers/)",
    )

    @field_validator("models", "runtime_modules", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"repository {str(value)!r} is not a directory")
        return value.resolve()

    @model_validator(mode="after")
    def _keys_not_empty(self) -> Settings:
        for name in ("api_key", "inference_api_key"):
            key = getattr(self, name)
            if key is not None and len(key.get_secret_value()) < 8:
                raise ValueError(f"{name} must be at least 8 characters")
        return self
