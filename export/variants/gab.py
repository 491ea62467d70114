"""Gaussian Attention Bias, `gab` (VARIANTS.md 3; module: export/models/gab.py).

Decisions:
- Restricted to the blocks that compute Q/K logits (`computing_only`): a block that reuses a previous map
  has no logits to add the bias to, so an explicit `gab_layers` naming one is refused.
- By default every such block but the model's last: the last block's bias cannot change the logits (G's
  class-token row is 0 and only the class token's output of the last block reaches the head), so its sigma
  and a would be dead parameters (never a gradient).
- Converted checkpoints: `gab_amplitude_init` defaults to 1.0, which is not function-preserving, and a = 0
  is a stationary point of a^2. Unless the spec set `gab_amplitude_init`, new GAB amplitudes start at
  `CONVERTED_AMPLITUDE` (1e-3: a bias of at most 1e-6 on the logits, non-zero gradients for a and sigma,
  the module's `reset_function_preserving`); an explicit value is honoured (`converted_start`).
- Folded, the bias is one constant [1, H, N, N] table added to the logits per GAB block: the graph must
  keep no Exp/Pow/Sqrt/Range, and hold one such table per GAB block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from export.variants.base import BuildContext, CostContext, GraphContext, LayerRule, LayoutContext, Option, VariantDef

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from export.spec import BlockConfig, ModelSpec


def _default_layers(ctx: LayoutContext) -> list[int]:
    # the last block's bias cannot reach the logits (G's class-token row is 0 and only the class token
    # leaves the last block), so by default it has none: its sigma/a would never get a gradient
    return [i for i in ctx.computing if i != ctx.depth - 1] or list(ctx.computing)


def _build(ctx: BuildContext) -> nn.Module:
    from export.models.gab import GaussianAttentionBias

    return GaussianAttentionBias(ctx.num_heads, ctx.grid_size, ctx.num_prefix_tokens,
                                 ctx.option("gab_sigma_init"), ctx.option("gab_amplitude_init"))


def _converted_start(module: nn.Module, spec: ModelSpec, new: frozenset[str]) -> None:
    """The user's explicit `gab_amplitude_init` wins over the converted amplitude."""
    if "amplitude" not in new or "gab_amplitude_init" not in spec.options:
        return
    import torch

    from export.models.gab import GaussianAttentionBias

    if isinstance(module, GaussianAttentionBias):
        with torch.no_grad():
            module.amplitude.fill_(float(spec.options["gab_amplitude_init"]))


def _fold(module: nn.Module) -> nn.Module:
    from export.models.gab import FoldedAttentionBias, GaussianAttentionBias

    return FoldedAttentionBias(module()) if isinstance(module, GaussianAttentionBias) else module


def _graph_check(proto: onnx.ModelProto, ctx: GraphContext) -> list[str]:
    if ctx.num_tokens is None:
        return []
    from export.flops import added_token_tables

    n = ctx.num_tokens
    biases = added_token_tables(proto, n)
    expected = ctx.blocks_with("gab")
    if not biases:
        return [f"gab: no constant [.., {n}, {n}] bias is added in the graph"]
    if expected is not None and len(biases) != expected:
        return [f"gab: {len(biases)} constant bias(es) for {expected} GAB block(s)"]
    return []


def _cost(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    return [("elementwise.gab", c.heads * c.tokens**2)] if b.has("gab") else []


GAB = VariantDef(
    name="gab",
    order=40,
    summary="Gaussian Attention Bias: a learnt Gaussian of patch distance added to the logits (Kim et al., BMVC 2023)",
    options=(
        Option("gab_sigma_init", float, 5.0, "initial Gaussian width sigma in patches (default 5.0)",
               check=lambda v: v > 0, check_message="must be > 0"),
        Option("gab_amplitude_init", float, 1.0,
               "initial amplitude a (bias a^2 exp(...)); default 1.0, 1e-3 when loading a checkpoint"),
        Option("gab_layers", tuple, None,
               "blocks with the Gaussian bias (default: the attention-computing blocks but the last)"),
    ),
    layers=LayerRule("gab_layers", _default_layers, computing_only=True),
    hook="bias",
    attr="gab",
    build=_build,
    no_weight_decay=("sigma", "amplitude"),
    converted_start=_converted_start,
    fold=_fold,
    forbidden_ops=frozenset({"Exp", "Pow", "Sqrt", "Range"}),
    graph_check=_graph_check,
    cost=_cost,
)
