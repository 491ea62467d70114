"""The OpenVINO runtime's own options: inference precision, streams, threads.

Read as the server's settings are (`VITSERVE_OPENVINO_PRECISION`, `VITSERVE_OPENVINO_STREAMS`,
`VITSERVE_OPENVINO_THREADS` and the `--openvino-*` flags of `vitserve serve`). They are server-wide defaults: a
model's config.pbtxt `parameters` (Triton's OpenVINO backend's keys, service/runtimes/openvino/config.py) win,
because a copy written as `<name>-openvino-bf16` is that precision by its name and its agreement report.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from service.runtimes.base import RuntimeOptions

Precision = Literal["auto", "f32", "bf16"]


class OpenVinoOptions(RuntimeOptions):
    """OpenVINO options (environment prefix `VITSERVE_`, e.g. `VITSERVE_OPENVINO_PRECISION=f32`)."""

    cli_flags: ClassVar[dict[str, dict[str, Any]]] = {
        "openvino_precision": {"choices": ["auto", "f32", "bf16"],
                               "help": "OpenVINO inference precision of models whose config.pbtxt names none"},
        "openvino_streams": {"type": int, "help": "OpenVINO streams per model version (0 = its instances)"},
        "openvino_threads": {"type": int, "help": "OpenVINO inference threads per model version (0 = CPU cores)"},
    }

    openvino_precision: Precision = Field(
        "auto", description="Inference precision of OpenVINO models whose config.pbtxt sets none: 'auto' is bf16 "
        "where the CPU computes it natively (AMX, avx512_bf16: OpenVINO's own CPU default), else f32"
    )
    openvino_streams: int = Field(
        0, ge=0, description="OpenVINO NUM_STREAMS per model version; 0 = one per execution instance (the batcher "
        "computes that many batches at once), the threads divided among them"
    )
    openvino_threads: int = Field(
        0, ge=0, description="OpenVINO INFERENCE_NUM_THREADS per model version; 0 = every CPU core this process may "
        "use (the compute gate keeps several models from oversubscribing them)"
    )
