"""Issue 9 through the real exported graphs: the Refiner's folded DLA (Conv + Clip, no BatchNormalization),
the sharing form, `reattn_scale`, V-only reuse blocks, graph-counted FLOPs and parameters in vitserve.json."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.flops import count_costs
from export.parity import check_parity
from service.manifest import Manifest

REL_TOL = 0.02
#: variants with options the plain spec list does not cover
OPTION_SPECS: tuple[tuple[str, dict], ...] = (
    ("test+refiner", {"refiner_share": True}),
    ("test+reattn", {"reattn_scale": True}),
    ("test+lavit", {"lavit_transform": "none"}),
    ("demo+refiner", {"refiner_share": True}),
)
#: every variant for the parameter count check: single variants, options and a combination
COUNT_SPECS: tuple[tuple[str, dict], ...] = (
    ("test", {}), ("test+cb", {}), ("test+cbs", {}), ("test+lavit", {}), ("test+gab", {}), ("test+reattn", {}),
    ("test+refiner", {}), ("test+cbs+gab+reattn+refiner", {}), *OPTION_SPECS[:3],
)


@pytest.mark.parametrize(("text", "options"), [("test+refiner", {}), ("demo+refiner", {}), *OPTION_SPECS[:1]])
def test_refiner_graph_has_clip_no_batchnorm_and_matches_pytorch(exported, text, options):
    e = exported(text, **options)
    ops = [n.op_type for n in e.proto.graph.node]
    refining = sum(b.attn.refiner is not None for b in e.model.blocks)
    assert "BatchNormalization" not in ops
    assert ops.count("Clip") == 2 * refining  # ReLU6 after the expansion and after the depthwise conv
    consts = {i.name: float(onnx.numpy_helper.to_array(i)) for i in e.proto.graph.initializer if not i.dims}
    assert {tuple(consts[x] for x in n.input[1:]) for n in e.proto.graph.node if n.op_type == "Clip"} == {(0.0, 6.0)}
    assert ops.count("Conv") == 1 + 3 * refining  # patch embedding + expand, depthwise, reduce per refining block
    report = check_parity(e.model, e.proto, input_size=e.input_size, batch_sizes=(1, 8), tolerance=1e-4)
    assert report.max_abs_diff <= 1e-4


def test_reuse_blocks_ship_only_their_v_projection(exported):
    """A Less-Attention / sharing block's graph multiplies by a [D, D] V weight and nothing of Q/K."""
    # (lavit's token form gives the model's last block full attention: issue 28)
    for text, options, reuse in (("test+lavit", {}, [2]), ("test+lavit", {"lavit_transform": "none"}, [2, 3]),
                                 ("test+refiner", {"refiner_share": True}, [1, 3])):
        e = exported(text, **options)
        model = e.model
        for i in reuse:
            assert not hasattr(model.blocks[i].attn, "qkv") and model.blocks[i].attn.v.weight.shape == (32, 32)
        inits = {i.name: tuple(i.dims) for i in e.proto.graph.initializer}
        qkv_weights = [d for d in inits.values() if d in ((32, 96), (96, 32))]
        assert len(qkv_weights) == 4 - len(reuse)  # one fused QKV weight per attention-computing block


@pytest.mark.parametrize(("text", "options"), OPTION_SPECS)
def test_graph_costs_of_option_variants_match_the_formulas(exported, text, options):
    from export.costs import formula_flops, formula_macs

    e = exported(text, **options)
    costs = count_costs(e.proto)
    assert costs.macs == pytest.approx(formula_macs(e.spec), rel=REL_TOL)
    assert costs.flops == pytest.approx(formula_flops(e.spec), rel=REL_TOL)


def test_reattn_scale_multiplies_the_reattended_map_and_folds_into_the_conv(exported):
    plain, scaled = exported("test+reattn"), exported("test+reattn", reattn_scale=True)
    a = torch.rand(2, 2, 17, 17)
    re_plain = plain.model.blocks[3].attn.reattn
    re_scaled = copy.deepcopy(scaled.model.blocks[3].attn.reattn)
    re_scaled.load_state_dict(re_plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(re_scaled.eval()(a), re_plain.eval()(a) * 16 ** -0.5)
    ops = [n.op_type for n in scaled.proto.graph.node]
    assert ops.count("Mul") == [n.op_type for n in plain.proto.graph.node].count("Mul")  # s is folded away


def _distinct(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose every parameter is distinct and non-zero, so the exporter de-duplicates or drops nothing."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen) + 0.01)
    return model


@pytest.fixture(scope="module")
def counted_repository(exported, tmp_path_factory) -> Path:
    from export.build import build_model

    repo = tmp_path_factory.mktemp("counted")
    for text, options in COUNT_SPECS:
        e = exported(text, **options)
        name = e.spec.name + "".join(f"-{k}" for k in options)
        build_model(e.spec, repo, model=_distinct(e.model), name=name, progress=False)
    return repo


@pytest.mark.parametrize(("text", "options"), COUNT_SPECS, ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_manifest_parameters_are_the_trainable_parameters_and_the_graph_holds_the_rest_folded(
    exported, counted_repository, text, options
):
    """`parameters` = the model's trainable parameter elements before folding (issue 28); the graph's float
    initializers less the folded GAB tables [1, H, N, N] equal it where nothing folds, and are fewer where
    BatchNorms fold into convs or sigma/a into a table."""
    from export.costs import count_parameters

    e = exported(text, **options)
    model_dir = counted_repository / (e.spec.name + "".join(f"-{k}" for k in options))
    manifest = Manifest.load(model_dir)
    proto = onnx.load(str(model_dir / "1" / "model.onnx"))
    float_inits = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    tables = {i.name for i in float_inits if i.name.endswith(".gab.bias")}
    assert len(tables) == sum(b.has("gab") for b in e.model.layout)
    total = sum(int(np.prod(i.dims)) for i in float_inits if int(np.prod(i.dims)) > 1 and i.name not in tables)
    torch_count = count_parameters(e.model)
    assert manifest.costs.parameters == torch_count and "before folding" in manifest.costs.convention
    if not set(e.spec.variants) & {"gab", "reattn", "refiner"}:  # nothing folded: the same count as the graph
        assert total == torch_count
    else:
        assert total < torch_count


def test_lavit_parameter_count_holds_no_dead_qkv_rows(exported):
    """vit_small+lavit (none) needs 10 x 2 (D^2 + D) fewer parameters than vanilla, none of them unused."""
    from export.costs import count_parameters
    from export.models import create_model
    from export.spec import parse_spec

    vanilla = count_parameters(create_model(parse_spec("vit_small")))
    lavit = count_parameters(create_model(parse_spec("vit_small+lavit", lavit_transform="none")))
    assert vanilla - lavit == 10 * 2 * (384 * 384 + 384)
    assert round(lavit / 1e6, 2) == 19.09
