"""FLOPs counted on the ONNX graph: hand-checked small graphs, then every variant against torch's
FlopCounterMode and against the VARIANTS.md formulas (export/costs.py), within 2 %."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_pipeline_specs import VARIANT_SPECS  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

from export.flops import count_costs, count_flops_by_op, count_graph_parameters

REL_TOL = 0.02


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_matmul_gemm_and_elementwise_counts_by_hand():
    # x [B, 5, 6] @ w [6, 4] -> [B, 5, 4]: 5*4*6 = 120 MACs; + bias: 20 adds; softmax 20 elem * 5
    w = numpy_helper.from_array(np.ones((6, 4), np.float32), "w")
    b = numpy_helper.from_array(np.ones((4,), np.float32), "b")
    g = numpy_helper.from_array(np.ones((3, 4), np.float32), "g")  # Gemm weight [N=3, K=4], transB
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Softmax", ["a"], ["s"], axis=-1),
        helper.make_node("Gather", ["s", "zero"], ["cls"], axis=1),  # [B, 4]
        helper.make_node("Gemm", ["cls", "g", "gb"], ["y"], transB=1),  # [B, 3]: 3*4 = 12 MACs + 3 bias
    ]
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    gb = numpy_helper.from_array(np.ones((3,), np.float32), "gb")
    model = _model(nodes, [_vi("x", ["batch", 5, 6])], [_vi("y", ["batch", 3])], [w, b, g, zero, gb])
    flops, macs = count_flops_by_op(model)
    assert macs == 120 + 12
    assert flops == {"MatMul": 240, "Add": 20, "Softmax": 100, "Gemm": 24 + 3}
    assert count_graph_parameters(model) == 24 + 4 + 12 + 3


def test_depthwise_and_grouped_conv_counts_by_hand():
    # x [1, 6, 8, 8]; depthwise 3x3 (group 6, same padding): 6*8*8 outputs x 9 = 3456 MACs
    # grouped 1x1, group 2, 6 -> 4 channels: 4*8*8 outputs x (6/2)*1*1 = 768 MACs, with bias 256 adds
    dw = numpy_helper.from_array(np.ones((6, 1, 3, 3), np.float32), "dw")
    gw = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "gw")
    gb = numpy_helper.from_array(np.ones((4,), np.float32), "gb")
    nodes = [
        helper.make_node("Conv", ["x", "dw"], ["d"], group=6, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Conv", ["d", "gw", "gb"], ["y"], group=2, kernel_shape=[1, 1]),
        helper.make_node("ReduceMean", ["y"], ["r"], keepdims=1),
    ]
    model = _model(nodes, [_vi("x", ["batch", 6, 8, 8])], [_vi("r", ["batch", 1, 1, 1])], [dw, gw, gb])
    flops, macs = count_flops_by_op(model)
    assert macs == 3456 + 768
    assert flops == {"Conv": 2 * (3456 + 768) + 256, "ReduceMean": 256}


def test_shapes_unknown_to_inference_are_read_by_running_the_graph():
    # Reshape to a shape computed at run time from Shape(x): static inference cannot always resolve it
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["x2"]),
        helper.make_node("MatMul", ["x2", "w"], ["y"]),
    ]
    w = numpy_helper.from_array(np.ones((7, 2), np.float32), "w")
    model = _model(nodes, [_vi("x", ["batch", 3, 7])], [_vi("y", ["batch", 3, 2])], [w])
    _, macs = count_flops_by_op(model)
    assert macs == 3 * 2 * 7


def _torch_macs(model: torch.nn.Module, input_size) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("text", VARIANT_SPECS)
def test_graph_macs_match_torch_flop_counter_and_formula(exported, text):
    from export.costs import formula_macs

    e = exported(text)
    costs = count_costs(e.proto)
    torch_macs = _torch_macs(e.folded, e.input_size)  # the explicit (unfused) attention path
    assert e.folded.fused_attn is False
    assert costs.macs == pytest.approx(torch_macs, rel=REL_TOL)
    assert costs.macs == pytest.approx(formula_macs(e.spec), rel=REL_TOL)
    assert costs.flops > 2 * costs.macs  # element-wise work is counted on top


@pytest.mark.parametrize("text", VARIANT_SPECS)
def test_graph_flops_match_the_formula(exported, text):
    from export.costs import formula_flops

    e = exported(text)
    assert count_costs(e.proto).flops == pytest.approx(formula_flops(e.spec), rel=REL_TOL)


@pytest.mark.parametrize("text", ["demo", "demo+lavit", "demo+refiner"])
def test_demo_preset_costs_match_torch_and_formula(exported, text):
    from export.costs import formula_flops, formula_macs

    e = exported(text)
    costs = count_costs(e.proto)
    assert costs.macs == pytest.approx(_torch_macs(e.folded, e.input_size), rel=REL_TOL)
    assert costs.macs == pytest.approx(formula_macs(e.spec), rel=REL_TOL)
    assert costs.flops == pytest.approx(formula_flops(e.spec), rel=REL_TOL)


def test_variant_costs_differ_from_vanilla_as_the_formulas_say(exported):
    vanilla = count_costs(exported("test").proto)
    reattn = count_costs(exported("test+reattn").proto)
    refiner = count_costs(exported("test+refiner").proto)
    cb = count_costs(exported("test+cb").proto)
    assert reattn.macs > vanilla.macs and refiner.macs > reattn.macs
    assert cb.macs == vanilla.macs and cb.by_op["ReduceMean"] > vanilla.by_op.get("ReduceMean", 0)


def test_graph_parameter_count_equals_torch_for_vanilla(exported):
    import copy

    from export.costs import count_parameters
    from export.onnx_export import export_onnx

    # identical tensors (all-ones norms, zero biases) are de-duplicated by the exporter and a zero
    # head bias is dropped, so compare on weights that are all distinct and non-zero
    model = copy.deepcopy(exported("test").folded)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    proto = export_onnx(model, None, input_size=exported("test").input_size)
    assert count_graph_parameters(proto) == count_parameters(model)
    assert count_costs(proto).parameters == count_parameters(model)
    assert count_costs(proto, parameters=7).parameters == 7
