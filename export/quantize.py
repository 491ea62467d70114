"""Dynamically quantised int8 copy of an exported model (`<name>-int8`).

Why a separate model, not a second version: the int8 graph computes different numbers, so it
gets its own name, manifest and agreement report, and the service can serve both side by side
(`/v1/compare`). ONNX Runtime's dynamic quantisation stores MatMul/Gemm weights as int8 and
quantises activations per batch at run time; no calibration data is needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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


def top1_agreement(fp32_path: Path, int8_path: Path, inputs: np.ndarray, *, source_model: str) -> QuantizationReport:
    """Fraction of `inputs` whose top-1 class is the same in the int8 and fp32 graphs (each run at batch 1)."""
    import numpy as np

    from export.parity import ort_session

    if len(inputs) == 0:
        raise ValueError("top1_agreement needs at least one input")
    fp32 = ort_session(str(fp32_path))
    int8 = ort_session(str(int8_path))
    agree = 0
    # One image per run: dynamic quantisation picks activation scales per batch, so an image's int8
    # logits depend on what it is batched with; batch 1 makes the report reproducible.
    for image in inputs:
        chunk = np.ascontiguousarray(image[None], dtype=np.float32)
        a = fp32.run(None, {INPUT_NAME: chunk})[0].argmax(axis=1)
        b = int8.run(None, {INPUT_NAME: chunk})[0].argmax(axis=1)
        agree += int((a == b).sum())
    return QuantizationReport(source_model=source_model, top1_agreement=agree / len(inputs), num_samples=len(inputs))
