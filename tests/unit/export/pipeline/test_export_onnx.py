"""ONNX export: every variant exports with the serving contract, folds, and matches PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_pipeline_specs import VARIANT_SPECS  # type: ignore[import-not-found]
from onnx import TensorProto, helper

from export.onnx_export import FoldingError, graph_op_counts, verify_folding
from export.parity import ParityError, check_parity, ort_session, random_inputs
from service.manifest import INPUT_NAME, OUTPUT_NAME

PARITY_TOL = 1e-4


@pytest.mark.parametrize("text", VARIANT_SPECS)
def test_every_variant_exports_a_checked_graph_with_dynamic_batch(exported, text):
    e = exported(text)
    onnx.checker.check_model(e.proto, full_check=True)
    (inp,), (out,) = e.proto.graph.input, e.proto.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", *e.input_size]
    assert out_dims == ["batch", 10]
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize("text", VARIANT_SPECS)
def test_every_variant_graph_obeys_the_folding_rules(exported, text):
    from export.spec import block_layout

    e = exported(text)
    layout = block_layout(e.spec)
    counts = verify_folding(e.proto, e.spec.variants, num_tokens=e.model.num_tokens,
                            counts={"gab": sum(b.has("gab") for b in layout)})
    token_maps = e.spec.has("lavit") and e.spec.option("lavit_transform") == "token"  # reuse blocks' own softmax
    assert counts["Softmax"] == sum(b.attention == "full" or (token_maps and b.has("lavit")) for b in layout)


def test_gab_graph_holds_one_constant_bias_per_block(exported):
    e = exported("test+gab")
    heads, n = e.model.blocks[0].attn.num_heads, e.model.num_tokens
    from export.onnx_export import constant_bias_shapes

    shapes = constant_bias_shapes(e.proto, n)
    assert len(shapes) == sum(b.has("gab") for b in e.model.layout) == len(e.model.blocks) - 1  # not the last block
    assert all(s[-3:] == (heads, n, n) for s in shapes)
    assert not {"Exp", "Pow", "Sqrt"} & graph_op_counts(e.proto).keys()


def test_reattn_graph_has_no_batchnorm_and_cb_is_mean_mul_add(exported):
    assert "BatchNormalization" not in graph_op_counts(exported("test+reattn").proto)
    cb = graph_op_counts(exported("test+cb").proto)
    vanilla = graph_op_counts(exported("test").proto)
    blocks = len(exported("test").model.blocks)
    assert cb["ReduceMean"] == vanilla["ReduceMean"] + blocks
    assert cb["Mul"] - vanilla["Mul"] >= blocks and cb["Add"] - vanilla["Add"] >= blocks


def _graph_with(op_types: list[str]) -> onnx.ModelProto:
    """A tiny valid graph x -> op -> ... -> y built by hand, to feed verify_folding."""
    nodes, prev = [], "x"
    for i, op in enumerate(op_types):
        out = f"t{i}"
        if op == "BatchNormalization":
            nodes.append(helper.make_node(op, [prev, "s", "b", "m", "v"], [out]))
        else:
            nodes.append(helper.make_node(op, [prev], [out]))
        prev = out
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    inits = [helper.make_tensor(k, TensorProto.FLOAT, [2], [1.0, 1.0]) for k in "sbmv"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("ops", "variants", "message"),
    [
        (["Exp"], ["gab"], "Exp"),
        (["Sqrt", "Relu"], ["gab"], "Sqrt"),
        (["BatchNormalization"], ["reattn"], "BatchNormalization"),
        (["Relu"], ["cb"], "ReduceMean"),
        (["Dropout"], [], "Dropout"),
    ],
)
def test_verify_folding_rejects_unfolded_graphs(ops, variants, message):
    with pytest.raises(FoldingError, match=message):
        verify_folding(_graph_with(ops), variants)


def test_verify_folding_requires_the_gab_bias_constant(exported):
    with pytest.raises(FoldingError, match="no constant"):
        verify_folding(exported("test").proto, ["gab"], num_tokens=exported("test").model.num_tokens)


@pytest.mark.parametrize("text", VARIANT_SPECS)
def test_onnx_runtime_matches_pytorch_at_batch_1_and_8(exported, text):
    e = exported(text)
    report = check_parity(e.model, e.proto, input_size=e.input_size, batch_sizes=(1, 8), tolerance=1e-4)
    assert report.max_abs_diff <= 1e-4
    assert report.batch_sizes == [1, 8]


def test_randomised_variant_terms_change_the_logits(exported):
    """The parity test is meaningful: each variant's perturbed terms change the output vs vanilla weights."""
    import torch

    x = torch.from_numpy(random_inputs(exported("test").input_size, 2, seed=5))
    with torch.no_grad():
        base = exported("test").model(x)
        for text in VARIANT_SPECS[1:]:
            # far above the parity tolerance, so parity would catch a graph that dropped the variant
            assert (exported(text).model(x) - base).abs().max().item() > 10 * PARITY_TOL, text
        assert base.abs().max().item() > 1.0


def test_parity_fails_loudly_when_the_graph_computes_something_else(exported):
    e = exported("test+gab")
    other = exported("test+cb").proto  # same shapes, different maths
    with pytest.raises(ParityError, match="differ"):
        check_parity(e.model, other, input_size=e.input_size)


def test_exported_graph_runs_at_any_batch_size(exported):
    e = exported("test+refiner")
    session = ort_session(e.proto)
    for batch in (1, 3, 17):
        (logits,) = session.run(None, {INPUT_NAME: random_inputs(e.input_size, batch, seed=batch)})
        assert logits.shape == (batch, 10) and np.isfinite(logits).all()


def test_lavit_without_transform_and_refiner_share_export(exported):
    for text, options in (("test+lavit", {"lavit_transform": "none"}), ("test+refiner", {"refiner_share": True})):
        e = exported(text, **options)
        verify_folding(e.proto, e.spec.variants)
        check_parity(e.model, e.proto, input_size=e.input_size)


def test_export_rejects_bad_arguments(exported):
    from export.onnx_export import export_onnx

    model = exported("test").folded
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, None, input_size=(3, 32, 32), opset=13)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, None, input_size=(1, 32, 32))
