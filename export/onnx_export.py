"""ONNX export of a (folded, eval-mode) ViT: `pixel_values -> logits`, dynamic batch, checked graph.

Why its own module: export is where the PyTorch model becomes the serving contract. The graph must
have the input/output names the service expects, a dynamic batch dimension, constant-folded
variant maths (VARIANTS.md "Folding") and pass `onnx.checker`. `verify_folding` turns the folding
rules into checks on the exported graph, so a regression in folding fails the build instead of
shipping a graph that recomputes constants on every request.

We use torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`): it decomposes SDPA
into plain MatMul/Softmax, folds constants through the onnxscript optimizer and gives clean graphs.
The TorchScript exporter (`exporter="torchscript"`) is kept as a fallback.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from service.manifest import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:  # heavy imports stay lazy
    import onnx
    import torch

    from export.spec import BlockConfig

Exporter = Literal["dynamo", "torchscript"]

#: never in an inference graph, whatever the variant.
TRAINING_OPS = frozenset({"Dropout", "BatchNormalization"})


def __getattr__(name: str) -> object:
    """Per-variant op tables, read from the variant table (`VariantDef.forbidden_ops` / `required_ops`)."""
    from export import variants as registry

    if name == "FORBIDDEN_OPS":  # op types that must not survive folding (VARIANTS.md "Folding")
        return {v.name: v.forbidden_ops for v in registry.variants() if v.forbidden_ops}
    if name == "REQUIRED_OPS":  # op types that must be present
        return {v.name: v.required_ops for v in registry.variants() if v.required_ops}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class FoldingError(ValueError):
    """The exported graph still computes something that folding should have made a constant."""


def export_onnx(
    model: torch.nn.Module,
    path: Path | None,
    *,
    input_size: tuple[int, int, int],
    opset: int = 18,
    dynamic_batch: bool = True,
    exporter: Exporter = "dynamo",
    example_batch: int = 2,
) -> onnx.ModelProto:
    """Export `model` (put in eval mode) to ONNX and return the checked ModelProto.

    Args:
        model: any module mapping float32 [B, 3, H, W] to logits [B, classes]. It should already be
            folded for inference (export/fold.py); it is switched to eval mode here.
        path: where to write `model.onnx`; None keeps it in memory only.
        input_size: (3, H, W) of the model input.
        opset: ONNX opset (>= 17 so LayerNormalization is one node).
        dynamic_batch: make dimension 0 of input and output symbolic (`batch`).
        exporter: "dynamo" (default) or "torchscript".
        example_batch: batch size of the tracing input; must be > 1 so the batch stays symbolic.
    """
    import onnx
    import torch

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    if len(input_size) != 3 or input_size[0] != 3:
        raise ValueError(f"input_size must be (3, H, W), got {input_size}")
    model = model.eval()
    example = torch.randn(example_batch, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            assert program is not None  # dynamo=True always returns the ONNXProgram (None is the legacy path)
            proto = program.model_proto
        elif exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(
                model,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes file objects; typed paths only
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            proto = onnx.load_model_from_string(buffer.getvalue())
        else:
            raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    _name_batch_dim(proto)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(path))
    return proto


def _name_batch_dim(proto: onnx.ModelProto) -> None:
    """Give the symbolic batch dimension of the graph input/output one stable name, `batch`."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def graph_op_counts(proto: onnx.ModelProto) -> Counter[str]:
    """How many nodes of each op type the main graph holds."""
    return Counter(node.op_type for node in proto.graph.node)


def constant_bias_shapes(proto: onnx.ModelProto, num_tokens: int) -> list[tuple[int, ...]]:
    """Shapes of float initializers [.., N, N] that an Add consumes (once per Add): folded attention biases."""
    from export.flops import added_token_tables

    return [dims for _, dims in added_token_tables(proto, num_tokens)]


def verify_folding(
    proto: onnx.ModelProto,
    variants: Iterable[str],
    *,
    num_tokens: int | None = None,
    counts: Mapping[str, int] | None = None,
    layout: Sequence[BlockConfig] | None = None,
) -> Counter[str]:
    """Raise FoldingError unless the graph obeys VARIANTS.md's folding rules; return the op counts.

    - every graph: no Dropout, no BatchNormalization (eval mode, BN folded);
    - each variant: its `forbidden_ops` absent, its `required_ops` present, and its `graph_check`
      passed (export/variants/; a check may count what the variant adds per block, e.g. constant
      [.., N, N] initializers given `num_tokens`, against the blocks carrying it: counted from
      `layout`, or given per variant name in `counts`).
    """
    from export import variants as registry
    from export.variants.base import GraphContext

    variants = list(variants)
    counts = graph_op_counts(proto)
    ctx = GraphContext(num_tokens=num_tokens, layout=tuple(layout) if layout is not None else None,
                       counts=dict(counts or {}))
    problems: list[str] = []
    for op in sorted(TRAINING_OPS & counts.keys()):
        problems.append(f"{counts[op]} {op} node(s) left in an inference graph")
    for name in variants:
        variant = registry.get(name)
        for op in sorted(variant.forbidden_ops & counts.keys()):
            problems.append(f"{name}: {counts[op]} {op} node(s); the variant's constants were not folded")
        missing = sorted(variant.required_ops - counts.keys())
        if missing:
            problems.append(f"{name}: expected op(s) {missing} are absent from the graph")
    for name in variants:
        check = registry.get(name).graph_check
        if check is not None:
            problems.extend(check(proto, ctx))
    if problems:
        raise FoldingError("folding check failed:\n  " + "\n  ".join(problems))
    return counts
