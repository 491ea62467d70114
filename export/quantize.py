"""Reduced-precision copies of an exported model: dynamic int8 (`<name>-int8`) and the shared agreement report.

Why a separate model, not a second version: the int8 (or fp16, export/fp16.py) graph computes
different numbers, so it gets its own name, manifest and agreement report, and the service can serve
both side by side (`/v1/compare`). ONNX Runtime's dynamic quantisation stores MatMul/Gemm weights as
int8 and quantises activations per batch at run time; no calibration data is needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.manifest import INPUT_NAME, QuantizationReport

if TYPE_CHECKING:
    import numpy as np

QUANTIZED_OPS = ("MatMul", "Gemm")


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """Write an ONNX Runtime dynamic int8 copy of `fp32_path` (MatMul/Gemm weights) to `int8_path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        # The quantiser rewrites the graph (e.g. Gemm weights) but keeps the exporter's value_info, and
        # its own shape inference then rejects the stale shapes: hand it a copy without value_info.
        source = onnx.load_model(str(fp32_path))
        del source.graph.value_info[:]
        fp32_copy = Path(tmp) / "fp32.onnx"
        onnx.save_model(source, str(fp32_copy))
        # quantize_dynamic writes side files next to its working copy; keep them out of the repository
        work = Path(tmp) / "model.onnx"
        quantize_dynamic(
            str(fp32_copy),
            str(work),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=False,
        )
        int8_path.write_bytes(work.read_bytes())
    return int8_path


def agreement_report(
    fp32_path: Path,
    copy_path: Path,
    inputs: np.ndarray,
    *,
    source_model: str,
    method: Literal["dynamic-int8", "fp16", "openvino-f32", "openvino-bf16"] = "dynamic-int8",
    inputs_description: str | None = None,
    copy_session: Any = None,
) -> QuantizationReport:
    """Top-1 agreement and max |logit difference| of a reduced-precision copy against fp32 on `inputs`.

    `copy_session` runs the copy instead of an ONNX Runtime session of `copy_path` (an OpenVINO IR:
    export/openvino.py's `OpenVinoSession`, which has the same `run`).

    One image per run: dynamic quantisation picks activation scales per batch, so an image's int8
    logits depend on what it is batched with; batch 1 makes the report reproducible (and the same
    protocol for every method).
    """
    import numpy as np

    from export.parity import ort_session

    if len(inputs) == 0:
        raise ValueError("an agreement report needs at least one input")
    fp32 = ort_session(str(fp32_path))
    other = copy_session if copy_session is not None else ort_session(str(copy_path))
    agree, worst = 0, 0.0
    for image in inputs:
        chunk = np.ascontiguousarray(image[None], dtype=np.float32)
        a = fp32.run(None, {INPUT_NAME: chunk})[0]
        b = other.run(None, {INPUT_NAME: chunk})[0]
        if not np.isfinite(b).all():
            raise RuntimeError(f"the {method} copy of {source_model} produced non-finite logits")
        agree += int((a.argmax(axis=1) == b.argmax(axis=1)).sum())
        worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
    return QuantizationReport(method=method, source_model=source_model, top1_agreement=agree / len(inputs),
                              num_samples=len(inputs), max_abs_logit_diff=worst, inputs=inputs_description)
