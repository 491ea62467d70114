"""FLOPs per image counted on the exported ONNX graph, not on the PyTorch module.

Why on the graph: the graph is what the service runs, after folding. Counting it catches work
the exporter left in (or folded away) that a formula or a PyTorch hook would not see, and the
service's `flops_total` metric multiplies exactly this number.

Convention (also stored in `Costs.convention`):
- MatMul, Gemm, Conv (incl. grouped/depthwise), MatMulInteger, ConvInteger: MACs = output elements x
  reduction length; FLOPs = 2 x MACs, plus 1 per output element for a Gemm/Conv bias.
- element-wise ops on float tensors (Add, Sub, Mul, Div, Erf, Sqrt, Pow, Exp, Tanh, Relu, ...):
  1 FLOP per output element.
- Reduce* ops: 1 per input element.
- Softmax / LogSoftmax: 5 per element (max, subtract, exp, sum, divide).
- LayerNormalization: 7 per element (mean, centre, square, variance, normalise, scale, shift).
- BatchNormalization: 2 per element (scale and shift, as in eval mode).
- data movement (Reshape, Transpose, Concat, Gather, Slice, Expand, Shape, Cast, ...): 0.
Shapes come from ONNX shape inference with the batch fixed to 1; if inference leaves a counted
node's shape unknown, the graph is run once in ONNX Runtime on a zero batch-1 input to read them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING

from service.manifest import Costs

if TYPE_CHECKING:
    import onnx

CONVENTION = (
    "per image (batch 1); FLOPs = 2*MACs for MatMul/Gemm/Conv (+1 per output element for a bias), "
    "1 per output element for float element-wise ops, 1 per input element for Reduce*, "
    "5 per Softmax element, 7 per LayerNormalization element, 2 per BatchNormalization element; "
    "data movement 0"
)
#: how `parameters` was counted: on the model before folding (what export/build.py passes), or on this graph
PARAMETERS_FROM_MODEL = (
    "parameters: trainable PyTorch parameter elements before folding, whatever their value and whether or not "
    "they fold into constants (BatchNorm gamma/beta, GAB sigma/a and zero-initialised biases included; buffers "
    "and running statistics excluded); no built weight is unable to reach the output"
)
PARAMETERS_FROM_GRAPH = "parameters: float initializer elements of this graph, less folded GAB bias tables"

MAC_OPS = frozenset({"MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger"})
ELEMENTWISE_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu",
        "Neg", "Reciprocal", "Abs", "Max", "Min", "Clip", "Sum", "Mean", "Gelu", "HardSigmoid",
        "LeakyRelu", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign",
    }
)
REDUCE_OPS = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL2"}
)
PER_ELEMENT = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 7, "BatchNormalization": 2}
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})

Shape = tuple[int, ...]


def count_costs(
    proto: onnx.ModelProto, *, parameters: int | None = None, num_tokens: int | None = None
) -> Costs:
    """Count FLOPs and MACs per image on `proto`; `parameters` defaults to `graph_parameters(proto, num_tokens)`.

    Pass `parameters` to give the count of the model the graph was exported from (`export.costs.count_parameters`:
    what the manifest holds, and what an int8 copy, whose weights are no longer float initializers, carries
    over); `convention` then says so (`PARAMETERS_FROM_MODEL`, else `PARAMETERS_FROM_GRAPH`).
    """
    flops_by_op, macs = count_flops_by_op(proto)
    return Costs(
        flops=sum(flops_by_op.values()),
        macs=macs,
        parameters=graph_parameters(proto, num_tokens=num_tokens) if parameters is None else parameters,
        convention=f"{CONVENTION}; {PARAMETERS_FROM_GRAPH if parameters is None else PARAMETERS_FROM_MODEL}",
        by_op=dict(sorted(flops_by_op.items())),
    )


def count_flops_by_op(proto: onnx.ModelProto) -> tuple[Counter[str], int]:
    """FLOPs per op type and total MACs of one image, per the module's convention."""
    bad = sorted({n.op_type for n in proto.graph.node} & CONTROL_FLOW)
    if bad:
        raise ValueError(f"cannot count FLOPs through control flow ops {bad}")
    shapes, floats = static_shapes(proto, batch=1)
    flops: Counter[str] = Counter()
    total_macs = 0
    for node in proto.graph.node:
        op = node.op_type
        if op in MAC_OPS:
            node_macs, bias_elems = _macs(node, shapes)
            total_macs += node_macs
            flops[op] += 2 * node_macs + bias_elems
        elif op in ELEMENTWISE_OPS and node.output[0] in floats:
            flops[op] += _numel(shapes[node.output[0]])
        elif op in REDUCE_OPS and node.output[0] in floats:
            flops[op] += _numel(shapes[node.input[0]])
        elif op in PER_ELEMENT:
            flops[op] += PER_ELEMENT[op] * _numel(shapes[node.input[0]])
    return flops, total_macs


def _macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> tuple[int, int]:
    """(MACs, bias elements) of one MatMul/Gemm/Conv node."""
    out = shapes[node.output[0]]
    attrs = {a.name: a for a in node.attribute}
    if node.op_type in {"MatMul", "MatMulInteger"}:
        a = shapes[node.input[0]]
        return _numel(out) * a[-1], 0
    if node.op_type == "Gemm":
        a = shapes[node.input[0]]
        k = a[0] if "transA" in attrs and attrs["transA"].i else a[1]
        bias = _numel(out) if len(node.input) > 2 and node.input[2] else 0
        return _numel(out) * k, bias
    # Conv / ConvInteger: weight [C_out, C_in / group, k...]
    w = shapes[node.input[1]]
    bias = _numel(out) if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] else 0
    return _numel(out) * _numel(w[1:]), bias


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def count_graph_parameters(proto: onnx.ModelProto, *, exclude: Collection[str] = ()) -> int:
    """Elements of float initializers (>1 element) counted once per consuming node, except `exclude`.

    Counting per use, not per initializer, undoes the exporter's de-duplication of identical
    tensors (e.g. every LayerNorm weight of a freshly initialised model is all ones and is stored
    once); on a graph whose weights are all distinct it is the plain sum of initializer sizes.
    Scalars and shape constants are not parameters.
    """
    import onnx

    sizes = {
        i.name: _numel(tuple(i.dims))
        for i in proto.graph.initializer
        if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and _numel(tuple(i.dims)) > 1
        and i.name not in exclude
    }
    total = 0
    for node in proto.graph.node:
        for name in set(node.input):
            total += sizes.get(name, 0)
    return total


def folded_constants(proto: onnx.ModelProto, num_tokens: int) -> dict[str, int]:
    """Name -> size of the folded constants in the graph: float initializers [.., N, N] added by an Add.

    These are folded attention biases (`export.fold`): a precomputed [1, H, N, N] value of a few learned
    numbers per block, a constant of the graph rather than a parameter. Learned N x N maps that feed a
    MatMul, not an Add, are parameters and are not matched.
    """
    return {name: _numel(dims) for name, dims in added_token_tables(proto, num_tokens)}


def added_token_tables(proto: onnx.ModelProto, num_tokens: int) -> list[tuple[str, Shape]]:
    """(name, shape) of float initializers [.., N, N] consumed by an Add, once per consuming Add."""
    import onnx

    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    found: list[tuple[str, Shape]] = []
    for node in proto.graph.node:
        if node.op_type != "Add":
            continue
        for name in node.input:
            dims = inits.get(name)
            if dims and len(dims) >= 3 and dims[-1] == dims[-2] == num_tokens:
                found.append((name, dims))
    return found


def graph_parameters(proto: onnx.ModelProto, *, num_tokens: int | None = None) -> int:
    """The parameters the exported graph needs: `count_graph_parameters` minus `folded_constants`.

    This is the manifest's `parameters`. It differs from the PyTorch count by what folding does:
    BatchNorm gamma/beta/statistics become conv biases or a per-head affine map, a folded attention bias
    becomes a constant table (not counted), and unused weights do not exist.
    """
    exclude = folded_constants(proto, num_tokens) if num_tokens else {}
    return count_graph_parameters(proto, exclude=exclude)


def static_shapes(proto: onnx.ModelProto, *, batch: int = 1) -> tuple[dict[str, Shape], set[str]]:
    """Concrete shape of every tensor at the given batch, and the names of float tensors."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    del fixed.graph.value_info[:]
    for value in list(fixed.graph.input) + list(fixed.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to running the graph
        inferred = fixed
    shapes: dict[str, Shape] = {}
    floats: set[str] = set()
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = value.type.tensor_type
        dims = tt.shape.dim
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
        if tt.elem_type in float_types:
            floats.add(value.name)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        if init.data_type in float_types:
            floats.add(init.name)
    needed: set[str] = set()
    for node in inferred.graph.node:
        if node.op_type in MAC_OPS | ELEMENTWISE_OPS | REDUCE_OPS | PER_ELEMENT.keys():
            needed.update(n for n in list(node.input[:2]) + list(node.output[:1]) if n)
    missing = needed - shapes.keys()
    if missing:
        ran, ran_floats = _shapes_by_running(fixed, batch, sorted(missing))
        shapes.update(ran)
        floats |= ran_floats
    return shapes, floats


def _shapes_by_running(proto: onnx.ModelProto, batch: int, names: list[str]) -> tuple[dict[str, Shape], set[str]]:
    """Run the graph once on zeros, exposing `names` as outputs, to read their concrete shapes."""
    import numpy as np
    import onnx

    from service.runtimes.onnxruntime.session import SessionConfig, build_session

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = build_session(probe.SerializeToString(),
                            SessionConfig(intra_op_threads=0, allow_spinning=True, graph_optimization_level="disable"))
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in inp.shape]
        feeds[inp.name] = np.zeros(shape, dtype=np.float32)
    outputs = session.run(names, feeds)
    shapes = {n: tuple(o.shape) for n, o in zip(names, outputs, strict=True)}
    floats = {n for n, o in zip(names, outputs, strict=True) if np.issubdtype(o.dtype, np.floating)}
    return shapes, floats
