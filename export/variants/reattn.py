"""Re-attention (DeepViT), `reattn` (VARIANTS.md 4; module: export/models/reattn.py).

Decisions: restricted to the blocks that compute Q/K (`computing_only`; its default set is the last half of
them, and an explicit `reattn_layers` naming a reuse block is refused). Its BatchNorm starts as the identity
with frozen statistics on a converted checkpoint and folds into the head-mixing convolution. From scratch the
demo model trains longer than the demo recipe's default: its BatchNorm over attention maps can end just under
the 95 % held-out target after the default epochs (the manifests hold the measured accuracies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from export.variants.base import BuildContext, CostContext, LayerRule, LayoutContext, Option, VariantDef

if TYPE_CHECKING:
    from torch import nn

    from export.models.reattn import ReAttention
    from export.spec import BlockConfig


def _default_layers(ctx: LayoutContext) -> list[int]:
    """The last half of the blocks that compute attention."""
    computing = list(ctx.computing)
    return computing[len(computing) - len(computing) // 2:] if len(computing) > 1 else computing


def _build(ctx: BuildContext) -> nn.Module:
    from export.models.reattn import ReAttention

    return ReAttention(ctx.num_heads, ctx.scale if ctx.option("reattn_scale") else 1.0)


def _fold(module: nn.Module) -> nn.Module:
    cast("ReAttention", module).fold_norm()  # the registry folds only the module `_build` made
    return module


def _cost(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    if not b.has("reattn"):
        return []
    H, N = c.heads, c.tokens
    return [("macs.reattn", H * H * N * N), ("elementwise.reattn", H * N * N)]  # head mixing, its bias


REATTN = VariantDef(
    name="reattn",
    order=50,
    summary="Re-attention: a learnt head-mixing matrix and BatchNorm on the attention map (DeepViT)",
    options=(
        Option("reattn_layers", tuple, None,
               "blocks with re-attention (default: last half of the attention-computing blocks)"),
        Option("reattn_scale", bool, False,
               "multiply the re-attended map by s = d^-1/2 (the authors' transform_scale; default false)"),
    ),
    layers=LayerRule("reattn_layers", _default_layers, computing_only=True),
    hook="map",
    attr="reattn",
    build=_build,
    fold=_fold,
    forbidden_ops=frozenset({"BatchNormalization"}),
    cost=_cost,
    demo_epochs=60,
)
