"""What one OpenVINO model version is compiled with: the runtime's options, overridden by the model's config.pbtxt
`parameters`, and the inference precision the CPU can really run. Pure (no openvino import), so it is tested
without the library.

config.pbtxt keys, as Triton's OpenVINO backend reads them (triton-inference-server/openvino_backend):
`HINT_BF16` ("YES": bf16 inference precision), `NUM_STREAMS` (a number, AUTO or NUMA), `INFERENCE_NUM_THREADS`,
`PERFORMANCE_HINT` (LATENCY, THROUGHPUT, CUMULATIVE_THROUGHPUT), `TARGET_DEVICE` (only CPU here). One key is
vitserve's: `INFERENCE_PRECISION_HINT` ("f32" or "bf16"), because Triton's backend has no way to ask for f32 and
OpenVINO's CPU default on a bf16-capable CPU is bf16; Triton ignores keys it does not know, so such a config
still loads there (an f32 copy then runs at the device's default precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from service.runtimes.openvino.options import OpenVinoOptions

Resolved = Literal["f32", "bf16"]
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
PRECISION_KEY = "INFERENCE_PRECISION_HINT"  # vitserve's key (Triton's backend ignores it)
BF16_KEY = "HINT_BF16"  # Triton's OpenVINO backend's key


@dataclass(frozen=True)
class CompilePlan:
    """The properties handed to `Core.compile_model`, and what the API reports about them."""

    requested: Resolved  # the precision the model's config (or the options) asked for
    precision: Resolved  # the precision it runs at (f32 where the CPU has no bf16)
    properties: dict[str, str] = field(default_factory=dict)
    threads_per_batch: int = 1  # the compute gate's weight of one batch
    note: str | None = None  # why the precision differs from the one asked for


def model_precision(parameters: Mapping[str, str], default: str) -> str:
    """The precision a model's config.pbtxt asks for ('auto' where it names none): vitserve's
    INFERENCE_PRECISION_HINT, else Triton's HINT_BF16, else `default` (the runtime's option)."""
    hint = parameters.get(PRECISION_KEY, "").strip().lower()
    if hint:
        if hint not in ("f32", "bf16"):
            raise ValueError(f"config.pbtxt parameter {PRECISION_KEY} must be f32 or bf16, got {hint!r}")
        return hint
    bf16 = parameters.get(BF16_KEY, "").strip().lower()
    if bf16:
        if bf16 != "yes":  # Triton's backend accepts only YES
            raise ValueError(f"config.pbtxt parameter {BF16_KEY} must be YES, got {bf16!r}")
        return "bf16"
    return default


def _positive_int(parameters: Mapping[str, str], key: str) -> int | None:
    text = parameters.get(key, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"config.pbtxt parameter {key} must be a non-negative number, got {text!r}")
    return int(text)


def compile_plan(options: OpenVinoOptions, parameters: Mapping[str, str], *, instances: int, cores: int,
                 cpu_has_bf16: bool) -> CompilePlan:
    """The compile properties of one model version; ValueError naming the parameter for a bad config value."""
    device = parameters.get("TARGET_DEVICE", "CPU").strip().upper() or "CPU"
    if device != "CPU":
        raise ValueError(f"config.pbtxt TARGET_DEVICE {device!r}: this runtime serves OpenVINO on the CPU only")
    wanted = model_precision(parameters, options.openvino_precision)
    requested: Resolved = "bf16" if wanted == "bf16" or (wanted == "auto" and cpu_has_bf16) else "f32"
    precision: Resolved = "bf16" if requested == "bf16" and cpu_has_bf16 else "f32"
    note = None
    if precision != requested:
        note = ("bf16 requested, but this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lack BF16): "
                "runs f32")
    threads = _positive_int(parameters, "INFERENCE_NUM_THREADS") or options.openvino_threads or cores
    streams_text = parameters.get("NUM_STREAMS", "").strip().upper()
    if streams_text and streams_text not in ("AUTO", "NUMA") and not streams_text.isdigit():
        raise ValueError(f"config.pbtxt parameter NUM_STREAMS must be AUTO, NUMA or a number, got {streams_text!r}")
    streams = streams_text or str(options.openvino_streams or max(1, instances))
    properties = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": str(threads)}
    hint = parameters.get("PERFORMANCE_HINT", "").strip().upper()
    if hint:
        if hint not in PERFORMANCE_HINTS:
            raise ValueError(f"config.pbtxt parameter PERFORMANCE_HINT must be one of {PERFORMANCE_HINTS}, "
                             f"got {hint!r}")
        properties["PERFORMANCE_HINT"] = hint
    per_batch = max(1, threads // int(streams)) if streams.isdigit() and int(streams) > 0 else threads
    return CompilePlan(requested=requested, precision=precision, properties=properties,
                       threads_per_batch=per_batch, note=note)
