"""Models, payloads and probes for the second round of hostile inputs (issue 11).

`tiny_int8` is a real dynamically quantised graph (ONNX Runtime's quantize_dynamic, as export's
`--int8` makes): its activations are quantised with one scale per *batch*, so one request's extreme
values change every other request of the batch. `tiny_nan` computes NaN for a row whose first pixel
is negative (sqrt), to show a non-finite row fails only its own request.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from reliability_support import TinyModel, build_tiny_repository, write_custom_model
from tiny_repository import onnx_model

INT8 = TinyModel("tiny_int8", hidden=256, max_queue_delay_us=20000, input_range=None)
NAN = TinyModel("tiny_nan", max_queue_delay_us=20000, input_range=None)
# same preprocessing as tiny_a (the input range aside): /v1/compare decodes once for the three
COMPARE_MODELS = ("tiny_a", "tiny_b", "tiny_int8")


def int8_onnx(model: TinyModel, version: int) -> onnx.ModelProto:
    """The tiny hidden-layer graph, quantised to int8 the way export/quantize.py does it."""
    from export.quantize import quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(onnx_model(model, version), str(fp32))
        quantize_int8(fp32, int8)
        proto = onnx.load(str(int8))
    assert any(n.op_type == "DynamicQuantizeLinear" for n in proto.graph.node), "not a per-batch quantised graph"
    return proto


def nan_onnx(model: TinyModel, version: int) -> onnx.ModelProto:
    """logits = mean-pool @ W + sqrt(first pixel): NaN in exactly the rows whose first pixel is negative."""
    rng = np.random.default_rng(version)
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, model.size, model.size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.num_classes])
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, model.num_classes)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Reshape", ["pixel_values", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "zero", "one", "one"], ["first"]),
        helper.make_node("Sqrt", ["first"], ["root"]),
        helper.make_node("Add", ["mm", "root"], ["logits"]),
    ]
    proto = helper.make_model(helper.make_graph(nodes, model.name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    return proto


def build_round2_repository(root: Path) -> Path:
    """tiny_a and tiny_b (fp32), tiny_int8 (per-batch quantised), tiny_nan (NaN for negative first pixels)."""
    build_tiny_repository(root, [TinyModel("tiny_a"), TinyModel("tiny_b")])
    write_custom_model(root, INT8, int8_onnx)
    write_custom_model(root, NAN, nan_onnx)
    return root


def v2_binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A v2 binary-extension request for FP32 `x` [n, 3, 32, 32]: (body, headers)."""
    import json

    header = json.dumps({"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": False}}).encode()
    return header + x.astype(np.float32).tobytes(), {
        "content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def extreme_pixels(n: int = 1) -> np.ndarray:
    """Finite FP32 values no normalised image can have: +-3e38."""
    x = np.full((n, 3, 32, 32), 3e38, dtype=np.float32)
    x[:, :, ::2] = -3e38
    return x


def raw_exchange(base_url: str, data: bytes, *, wait_s: float, send_delay_s: float = 0.0) -> tuple[bytes, float]:
    """Send `data` on a fresh socket and read until the server closes it or `wait_s` passes.

    Returns (everything received, seconds until the close; `wait_s` or more when it stayed open)."""
    host, port = base_url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        if data:
            sock.sendall(data)
        if send_delay_s:
            time.sleep(send_delay_s)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, max(wait_s, time.monotonic() - start)
            except ConnectionResetError:
                return received, time.monotonic() - start
            if not chunk:
                return received, time.monotonic() - start
            received += chunk


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
