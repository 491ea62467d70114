"""fp16 copy of an exported model (`<name>-fp16`), made with ONNX Runtime's float16 converter.

Why: on a GPU, fp16 halves the weight bytes and uses the tensor cores (the CUDA execution provider
runs the graph as given; TensorRT's own FP16 mode, set in config.pbtxt, works on the fp32 graph
instead). `keep_io_types` keeps `pixel_values` and `logits` float32, so the copy has the same
signature, config.pbtxt and preprocessing as its fp32 source and clients cannot tell them apart.
ONNX Runtime's CPU provider runs the copy too (it inserts casts around ops without fp16 kernels),
which is how the export measures its agreement with fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: ops kept in fp32 in the copy; none is needed for the ViT graphs (every op converts and runs in
#: ONNX Runtime's CPU and CUDA providers), so the converter's own default block list applies.
FP16_OP_BLOCK_LIST: tuple[str, ...] = ()


def convert_fp16(fp32_path: Path, fp16_path: Path, op_block_list: Sequence[str] = FP16_OP_BLOCK_LIST) -> Path:
    """Write an fp16 copy of `fp32_path` (fp32 inputs and outputs kept) to `fp16_path`."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load_model(str(fp32_path))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(op_block_list)
    )
    # the converter appends the input/output casts at the end of the node list; ONNX requires
    # topological order (ONNX Runtime tolerates it, the checker and other runtimes do not)
    OnnxModel(converted).topological_sort(is_deterministic=True)
    onnx.checker.check_model(converted)
    fp16_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(converted, str(fp16_path))
    return fp16_path
