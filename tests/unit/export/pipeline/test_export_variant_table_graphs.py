"""Table-driven graph checks: every variant's declared ONNX ops, graph check and cost on its exported graph."""

from __future__ import annotations

import pytest

from export import variants as registry

BUILTIN = [v.name for v in registry.BUILTIN]


@pytest.mark.parametrize("name", BUILTIN)
def test_declared_ops_on_the_exported_graph(name: str, exported) -> None:
    from export.onnx_export import graph_op_counts
    from export.variants.base import GraphContext

    variant = registry.get(name)
    e = exported(f"test+{name}")
    counts = graph_op_counts(e.proto)
    assert variant.required_ops <= counts.keys(), f"{name}: missing {variant.required_ops - counts.keys()}"
    assert not variant.forbidden_ops & counts.keys(), f"{name}: left {variant.forbidden_ops & counts.keys()}"
    if variant.graph_check is not None:
        ctx = GraphContext(num_tokens=e.model.num_tokens, layout=e.spec.layout)
        assert list(variant.graph_check(e.proto, ctx)) == []


@pytest.mark.parametrize("name", BUILTIN)
def test_variant_cost_terms_match_the_graph(name: str, exported) -> None:
    """The vanilla formula plus the variant's declared terms is the graph's count (VARIANTS.md: within 2 %)."""
    from export.costs import formula_flops
    from export.flops import count_costs

    e = exported(f"test+{name}")
    graph = count_costs(e.proto, num_tokens=e.model.num_tokens).flops
    assert abs(formula_flops(e.spec) - graph) <= 0.02 * graph
