"""OpenVINO copies of an exported model: `<name>-openvino` (f32) and `<name>-openvino-bf16`.

Why copies, as the int8 and fp16 ones are: a copy computes different numbers (bf16 visibly so), so it gets its own
name, manifest and agreement report, and the service serves it beside the ONNX model (`/v1/compare`). Both copies
hold the same IR (`model.xml` + `model.bin`, converted from the checked fp32 ONNX graph, weights kept f32): the
precision is a runtime hint that Triton's OpenVINO backend reads from config.pbtxt (`HINT_BF16`), and vitserve's
f32 copy says `INFERENCE_PRECISION_HINT: f32` because OpenVINO's CPU default on a bf16-capable CPU is bf16.
The agreement against fp32 is measured here through OpenVINO at that precision, so it is the served numbers'.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.manifest import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("vitserve.export")

OpenVinoMethod = Literal["openvino-f32", "openvino-bf16"]
#: the inference precision of each copy, and the config.pbtxt parameters that ask for it
PRECISION: dict[str, Literal["f32", "bf16"]] = {"openvino-f32": "f32", "openvino-bf16": "bf16"}
PARAMETERS: dict[str, dict[str, str]] = {
    "openvino-f32": {"INFERENCE_PRECISION_HINT": "f32"},  # vitserve's key; Triton's backend ignores it
    "openvino-bf16": {"HINT_BF16": "YES"},  # Triton's OpenVINO backend's key (vitserve reads it too)
}
BACKEND = "openvino"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise RuntimeError("OpenVINO copies need the openvino package: pip install 'vitserve[openvino]'") from None
    return openvino


def convert_openvino(onnx_file: Path, out_dir: Path) -> dict[str, Path]:
    """Convert `onnx_file` to an IR in `out_dir`; return {file name in the version directory: path}."""
    ov = _openvino()
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)
    return {"model.xml": xml, "model.bin": xml.with_suffix(".bin")}


def cpu_has_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (the service decides the same way)."""
    return "BF16" in list(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoSession:
    """An IR compiled on the CPU at one inference precision, with ONNX Runtime's `run(outputs, feed)` shape, so the
    agreement report and the held-out evaluation run it as they run an ONNX Runtime session."""

    def __init__(self, xml: Path, precision: Literal["f32", "bf16"]) -> None:
        ov = _openvino()
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU",
                                           {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1"})
        self.request = self.compiled.create_infer_request()

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        self.request.infer({INPUT_NAME: feed[INPUT_NAME]})
        return [np.array(self.request.get_tensor(OUTPUT_NAME).data, dtype=np.float32, copy=True)]


def measured_precision(method: str) -> tuple[Literal["f32", "bf16"], str | None]:
    """The precision a copy's numbers are measured at here, and a note where that is not the served one (a bf16
    copy exported on a CPU without bf16 is measured at f32, as that CPU would serve it)."""
    precision = PRECISION[method]
    if precision == "bf16" and not cpu_has_bf16():
        log.warning("this CPU has no native bf16: the bf16 OpenVINO copy's agreement is measured at f32")
        return "f32", "measured at f32: the exporting CPU has no native bf16"
    return precision, None
